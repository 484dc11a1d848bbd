//! What the server writes to disk cannot be abused by a client or read by other users
//! (issue 19; SPEC, Limits: "the log never carries a client's text raw", "created readable
//! by the server's user only"). The real binary runs, with its log file and database in a
//! scratch directory of its own.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{ws_connect, Binary, Scratch};
use serde_json::json;

/// The mode bits of `path`.
fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// A join name holding a newline cannot forge a line of the log: before issue 19 the name
/// `x\n[WARN] admin root login` wrote that very line into chitchat.log; since issue 20 such
/// a name is refused outright (202: SPEC, Rooms, no control characters in names), and the
/// log's escaping stays as a second line of defence. The log file and the database are
/// created 0600.
#[test]
fn a_name_with_a_newline_cannot_forge_a_log_line_and_files_are_private() {
    let scratch = Scratch::new("log-safety");
    let config = json!({
        "address": "127.0.0.1:0",
        "ws_address": "127.0.0.1:0",
        "log_file": "chitchat.log",
        "log_level": "info",
        "bcrypt_cost": 4,
        "db_path": "chitchat.db",
    });
    let mut binary = Binary::spawn_with_config(&scratch, &config, &[("SECRET_KEY", "s")]);
    let (_, ws_addr) = binary.ready();
    assert_eq!(mode(&scratch.path("chitchat.log")), 0o600);
    assert_eq!(mode(&scratch.path("chitchat.db")), 0o600);
    let mut socket = ws_connect(ws_addr, "/chats/1/ws");
    socket.send_json(&json!({"event_type": "join", "name": "x\n[WARN] admin root login"}));
    let refused = socket.next_event();
    assert_eq!(
        refused["error"],
        json!({"code": 202, "error": "Client error: Duplicate username", "field": "name"})
    );
    drop(socket);
    binary.signal("TERM");
    let exit = binary.wait_exit();
    assert_eq!(exit.status.code(), Some(0));
    let log = std::fs::read_to_string(scratch.path("chitchat.log")).unwrap();
    assert!(
        log.lines().all(|line| !line.starts_with("[WARN] admin")),
        "a forged line in\n{log}"
    );
    assert!(
        log.contains("Duplicate username (field name)"),
        "the refusal is not in\n{log}"
    );
}
