//! The `chitchat` binary and its configuration (SPEC, "Running"): the ready line, `--config`,
//! exit code 2 on a bad configuration, the environment overrides, the generated-secret
//! warning, what the log may never contain, and a clean exit 0 on SIGTERM and SIGINT.
//!
//! These tests run the real binary through [`Binary`] in a scratch directory of their own,
//! with `PORT`, `WS_PORT` and `SECRET_KEY` cleared unless a test sets them. Every child is
//! killed when its guard drops, whatever path the test takes; every wait has a deadline, so
//! a server that never becomes ready or never exits fails instead of hanging.

mod common;

use std::net::{SocketAddr, TcpListener};

use common::{http_request, ws_connect, Binary, Exit, Response, Scratch, TestServer};
use serde_json::{json, Value};

/// A configuration that starts on free ports, logs to the console only, with a fixed secret.
fn quiet_config() -> Value {
    json!({
        "address": "127.0.0.1:0",
        "ws_address": "127.0.0.1:0",
        "log_file": null,
        "secret_key": "cli-test-secret",
    })
}

/// A port nobody listens on right now: bound on 127.0.0.1:0, then released.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("the bound address").port()
}

/// An address this machine can connect to for a listener at `addr` (0.0.0.0 -> 127.0.0.1).
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

/// `GET path` on a server at `addr`.
fn get(addr: SocketAddr, path: &str) -> Response {
    http_request(reachable(addr), "GET", path, &[], None)
}

/// Asserts the server at `addr` answers `GET /healthz` with 200 `{"status":true}`.
fn assert_healthy(addr: SocketAddr) {
    let response = get(addr, "/healthz");
    assert_eq!(response.status, 200, "body: {}", response.body);
    assert_eq!(response.json(), json!({"status": true}));
}

// ---------------------------------------------------------------------------------------
// Start-up
// ---------------------------------------------------------------------------------------

/// The binary prints `ChitChat <version> started at http://<addr> (ws://<addr>)` on stdout,
/// with the real ports when port 0 was asked for.
#[test]
fn ready_line_names_the_version_and_the_real_ports() {
    let scratch = Scratch::new("ready-line");
    let mut server = Binary::spawn_with_config(&scratch, &quiet_config(), &[]);
    let (http, ws) = server.ready();
    assert_eq!(http.ip().to_string(), "127.0.0.1");
    assert_eq!(ws.ip().to_string(), "127.0.0.1");
    assert_ne!(
        http.port(),
        0,
        "the ready line shows port 0, not the real port"
    );
    assert_ne!(
        ws.port(),
        0,
        "the ready line shows port 0, not the real port"
    );
    assert_ne!(http.port(), ws.port());
}

/// The ready line is printed exactly once.
#[test]
fn ready_line_is_printed_once() {
    let scratch = Scratch::new("ready-once");
    let mut server = Binary::spawn_with_config(&scratch, &quiet_config(), &[]);
    let (http, _) = server.ready();
    assert_healthy(http);
    server.signal("TERM");
    let output = server.wait_exit().output;
    let ready_lines = output
        .lines()
        .filter(|l| l.contains(" started at http://"))
        .count();
    assert_eq!(ready_lines, 1, "output:\n{output}");
}

/// The ports the ready line names are the ones the REST API and the WebSocket answer on.
#[test]
fn server_answers_on_the_ports_of_the_ready_line() {
    let scratch = Scratch::new("answers");
    let mut server = Binary::spawn_with_config(&scratch, &quiet_config(), &[]);
    let (http, ws) = server.ready();
    assert_healthy(http);
    let mut client = ws_connect(reachable(ws), "/chats/1/ws");
    client.join("alice");
}

/// `--config PATH` is read instead of `./config.json` (here a broken one that would stop
/// start-up).
#[test]
fn config_flag_selects_the_configuration_file() {
    let scratch = Scratch::new("config-flag");
    scratch.write("config.json", r#"{"no_such_key": true}"#);
    let config = scratch.config("chosen.json", &quiet_config());
    let mut server = Binary::spawn(&scratch, &["--config", &config], &[]);
    let (http, _) = server.ready();
    assert_healthy(http);
}

/// Without `--config` the binary reads `config.json` in its working directory.
#[test]
fn config_json_in_the_working_directory_is_the_default() {
    let scratch = Scratch::new("default-config");
    scratch.config("config.json", &quiet_config());
    let mut server = Binary::spawn(&scratch, &[], &[]);
    let (http, _) = server.ready();
    // The built-in default is port 8080; port 0 from the file gives some other port.
    assert_ne!(http.port(), 8080, "config.json was not read");
    assert_healthy(http);
}

/// The Go version's keys `Address`, `ReadTimeout`, `WriteTimeout` and `Static` are accepted.
#[test]
fn go_config_keys_are_accepted_as_aliases() {
    let scratch = Scratch::new("go-keys");
    let config = json!({
        "Address": "127.0.0.1:0",
        "ws_address": "127.0.0.1:0",
        "ReadTimeout": 5,
        "WriteTimeout": 5,
        "Static": scratch.dir.display().to_string(),
        "log_file": null,
        "secret_key": "cli-test-secret",
    });
    let mut server = Binary::spawn_with_config(&scratch, &config, &[]);
    let (http, _) = server.ready();
    assert_healthy(http);
}

/// `RedisURL` (Go) is `redis_url`: a node whose Redis cannot be reached still starts, says
/// so, and answers `/healthz` with 503 and code 605 (tests/cluster.rs covers a real Redis).
#[test]
fn redis_url_alias_is_used_and_an_unreachable_redis_makes_healthz_503() {
    let scratch = Scratch::new("redis-url");
    let mut config = quiet_config();
    // Port 1 on the loopback: nothing listens there, so the connection is refused at once.
    config["RedisURL"] = json!("redis://127.0.0.1:1");
    let mut server = Binary::spawn_with_config(&scratch, &config, &[]);
    let (http, _) = server.ready();
    server.wait_for_line("a warning that Redis is unreachable", |l| {
        l.text.contains("Redis is not reachable")
    });
    let response = get(http, "/healthz");
    assert_eq!(response.status, 503, "body: {}", response.body);
    assert_eq!(
        response.json(),
        json!({"status": false, "error": {"code": 605, "error": "Backend error: Storage unavailable"}})
    );
}

// ---------------------------------------------------------------------------------------
// Bad configuration: exit code 2, naming file and key
// ---------------------------------------------------------------------------------------

/// Runs the binary with `args` and `env` until it exits by itself; asserts that the exit code
/// is 2 and that the output names each of `names` (the file, the key, the variable).
fn assert_exits_2_naming(scratch: &Scratch, args: &[&str], env: &[(&str, &str)], names: &[&str]) {
    let Exit { status, output, .. } = Binary::spawn(scratch, args, env).wait_exit();
    assert_eq!(status.code(), Some(2), "output:\n{output}");
    for name in names {
        assert!(
            output.contains(name),
            "the message does not name {name}:\n{output}"
        );
    }
}

/// An unknown key stops start-up with exit code 2 and a message naming the file and the key.
#[test]
fn unknown_config_key_exits_2_naming_the_file_and_the_key() {
    let scratch = Scratch::new("unknown-key");
    let mut config = quiet_config();
    config["adress"] = json!("127.0.0.1:0");
    let config = scratch.config("config.json", &config);
    assert_exits_2_naming(&scratch, &["--config", &config], &[], &[&config, "adress"]);
}

/// A value of the wrong kind stops start-up with exit code 2, naming the file and the key.
#[test]
fn bad_config_value_exits_2_naming_the_file_and_the_key() {
    let scratch = Scratch::new("bad-value");
    let mut config = quiet_config();
    config["max_message_bytes"] = json!("lots");
    let config = scratch.config("config.json", &config);
    assert_exits_2_naming(
        &scratch,
        &["--config", &config],
        &[],
        &[&config, "max_message_bytes"],
    );
}

/// A configuration file that cannot be read stops start-up with exit code 2, naming it.
#[test]
fn unreadable_config_file_exits_2_naming_the_file() {
    let scratch = Scratch::new("unreadable");
    let missing = scratch.dir.join("missing.json").display().to_string();
    assert_exits_2_naming(&scratch, &["--config", &missing], &[], &[&missing]);
}

/// A configuration file that is not JSON stops start-up with exit code 2, naming it.
#[test]
fn config_file_that_is_not_json_exits_2_naming_the_file() {
    let scratch = Scratch::new("not-json");
    let config = scratch
        .write("config.json", "address = \"127.0.0.1:0\"\n")
        .display()
        .to_string();
    assert_exits_2_naming(&scratch, &["--config", &config], &[], &[&config]);
}

/// A `PORT` that is not a port number stops start-up with exit code 2, naming `PORT`.
#[test]
fn bad_port_env_exits_2_naming_the_variable() {
    let scratch = Scratch::new("bad-port");
    let config = scratch.config("config.json", &quiet_config());
    assert_exits_2_naming(
        &scratch,
        &["--config", &config],
        &[("PORT", "eighty")],
        &["PORT"],
    );
}

// ---------------------------------------------------------------------------------------
// Environment overrides and the secret
// ---------------------------------------------------------------------------------------

/// `PORT` moves the REST listener to `0.0.0.0:$PORT`.
#[test]
fn port_env_moves_http_to_all_interfaces_on_that_port() {
    let scratch = Scratch::new("port-env");
    let port = free_port();
    let mut server =
        Binary::spawn_with_config(&scratch, &quiet_config(), &[("PORT", &port.to_string())]);
    let (http, _) = server.ready();
    assert_eq!(http, SocketAddr::from(([0, 0, 0, 0], port)));
    assert_healthy(http);
}

/// `WS_PORT` moves the WebSocket listener to `0.0.0.0:$WS_PORT`.
#[test]
fn ws_port_env_moves_the_websocket_listener_to_that_port() {
    let scratch = Scratch::new("ws-port-env");
    let port = free_port();
    let mut server =
        Binary::spawn_with_config(&scratch, &quiet_config(), &[("WS_PORT", &port.to_string())]);
    let (_, ws) = server.ready();
    assert_eq!(ws, SocketAddr::from(([0, 0, 0, 0], port)));
    let mut client = ws_connect(reachable(ws), "/chats/1/ws");
    client.join("alice");
}

/// With no secret in the file or the environment, one is generated and a warning says
/// tokens will not survive a restart.
#[test]
fn missing_secret_is_generated_with_a_warning_that_tokens_will_not_survive_a_restart() {
    let scratch = Scratch::new("no-secret");
    let mut config = quiet_config();
    config.as_object_mut().unwrap().remove("secret_key");
    let mut server = Binary::spawn_with_config(&scratch, &config, &[]);
    let (http, _) = server.ready();
    server.wait_for_line("a warning about the generated secret", |l| {
        let text = l.text.to_lowercase();
        text.contains("secret") && text.contains("restart")
    });
    assert_healthy(http);
}

/// The generated secret works: private rooms issue tokens that open them.
#[test]
fn generated_secret_signs_working_tokens() {
    let scratch = Scratch::new("generated-secret-works");
    let mut config = quiet_config();
    config.as_object_mut().unwrap().remove("secret_key");
    let mut server = Binary::spawn_with_config(&scratch, &config, &[]);
    let (http, _) = server.ready();
    let token = create_private_room_and_token(http, "Vault", "vault-password");
    let auth = format!("Bearer {token}");
    let renewed = http_request(
        reachable(http),
        "GET",
        "/chats/2/token/renew",
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(renewed.status, 201, "body: {}", renewed.body);
}

/// `SECRET_KEY` counts as a configured secret: no generated-secret warning.
#[test]
fn secret_key_env_means_no_generated_secret_warning() {
    let scratch = Scratch::new("secret-env");
    let mut config = quiet_config();
    config.as_object_mut().unwrap().remove("secret_key");
    let mut server =
        Binary::spawn_with_config(&scratch, &config, &[("SECRET_KEY", "from-the-env")]);
    let (http, _) = server.ready();
    assert_healthy(http);
    server.signal("TERM");
    let output = server.wait_exit().output.to_lowercase();
    assert!(
        !output.contains("restart"),
        "a generated-secret warning despite SECRET_KEY:\n{output}"
    );
}

/// `secret_key` in the file counts as a configured secret: no generated-secret warning.
#[test]
fn secret_key_in_the_file_means_no_generated_secret_warning() {
    let scratch = Scratch::new("secret-file");
    let mut server = Binary::spawn_with_config(&scratch, &quiet_config(), &[]);
    let (http, _) = server.ready();
    assert_healthy(http);
    server.signal("TERM");
    let output = server.wait_exit().output.to_lowercase();
    assert!(
        !output.contains("restart"),
        "a generated-secret warning despite secret_key:\n{output}"
    );
}

// ---------------------------------------------------------------------------------------
// Logging
// ---------------------------------------------------------------------------------------

/// Creates a private room and returns a token for "alice" in it (the room gets id 2).
fn create_private_room_and_token(http: SocketAddr, title: &str, password: &str) -> String {
    let json = [("Content-Type", "application/json")];
    let room = json!({"title": title, "visibility": "private", "password": password}).to_string();
    let created = http_request(
        reachable(http),
        "POST",
        "/chats",
        &json,
        Some(room.as_bytes()),
    );
    assert_eq!(created.status, 201, "body: {}", created.body);
    let login = json!({"name": "alice", "secret": password}).to_string();
    let issued = http_request(
        reachable(http),
        "POST",
        "/chats/2/token",
        &json,
        Some(login.as_bytes()),
    );
    assert_eq!(issued.status, 201, "body: {}", issued.body);
    issued.json()["token"].as_str().expect("a token").to_owned()
}

/// `log_file` receives the same log lines as the console.
#[test]
fn log_file_receives_the_log() {
    let scratch = Scratch::new("log-file");
    let log = scratch.dir.join("server.log");
    let mut config = quiet_config();
    config["log_file"] = json!(log.display().to_string());
    let mut server = Binary::spawn_with_config(&scratch, &config, &[]);
    let (http, _) = server.ready();
    assert_healthy(http);
    server.signal("TERM");
    let exit = server.wait_exit();
    assert_eq!(exit.status.code(), Some(0));
    let written = std::fs::read_to_string(&log)
        .unwrap_or_else(|e| panic!("no log file {}: {e}", log.display()));
    assert!(!written.trim().is_empty(), "the log file is empty");
    let console = exit.output;
    for line in written.lines() {
        assert!(
            console.lines().any(|c| c == line),
            "{line:?} is in the log file but not on the console:\n{console}"
        );
    }
}

/// Each HTTP request is logged at `debug` as one line with method, path and status
/// (`method path status ms`; issue #3 puts it at debug so a busy server stays quiet at info).
#[test]
fn each_http_request_is_logged_with_method_path_and_status() {
    let scratch = Scratch::new("request-log");
    let mut config = quiet_config();
    config["log_level"] = json!("debug");
    let mut server = Binary::spawn_with_config(&scratch, &config, &[]);
    let (http, _) = server.ready();
    assert_healthy(http);
    assert_eq!(get(http, "/chats/99").status, 404);
    server.wait_for_line("a log line for GET /healthz 200", |l| {
        l.text.contains("GET /healthz 200")
    });
    server.wait_for_line("a log line for GET /chats/99 404", |l| {
        l.text.contains("GET /chats/99 404")
    });
}

/// Even at `debug`, neither the console nor the log file ever shows a room password, its
/// bcrypt hash, a token or the server secret.
#[test]
fn logs_never_contain_a_password_hash_token_or_the_secret() {
    let scratch = Scratch::new("log-secrets");
    let log = scratch.dir.join("server.log");
    let mut config = quiet_config();
    config["log_file"] = json!(log.display().to_string());
    config["log_level"] = json!("debug");
    config["secret_key"] = json!("the-server-secret-42");
    let mut server = Binary::spawn_with_config(&scratch, &config, &[]);
    let (http, ws) = server.ready();
    let password = "hunter2-hunter2";
    let token = create_private_room_and_token(http, "Vault", password);
    let auth = format!("Bearer {token}");
    let headers = [("Authorization", auth.as_str())];
    assert_eq!(
        http_request(reachable(http), "GET", "/chats/2", &headers, None).status,
        200
    );
    assert_eq!(
        http_request(
            reachable(http),
            "GET",
            "/chats/2/token/renew",
            &headers,
            None
        )
        .status,
        201
    );
    let mut client = ws_connect(reachable(ws), &format!("/chats/2/ws?token={token}"));
    client.join("alice");
    server.signal("TERM");
    let exit = server.wait_exit();
    assert_eq!(exit.status.code(), Some(0), "output:\n{}", exit.output);
    let written = std::fs::read_to_string(&log)
        .unwrap_or_else(|e| panic!("no log file {}: {e}", log.display()));
    let signature = token.rsplit('.').next().expect("a signature part");
    for (place, text) in [("console", exit.output), ("log file", written)] {
        for (what, needle) in [
            ("password", password),
            ("bcrypt hash", "$2"),
            ("token", token.as_str()),
            ("token signature", signature),
            ("secret", "the-server-secret-42"),
        ] {
            assert!(
                !text.contains(needle),
                "the {place} shows the {what}:\n{text}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------------------

/// SIGTERM stops the server with exit code 0.
#[test]
fn sigterm_stops_the_server_with_exit_code_0() {
    let scratch = Scratch::new("sigterm");
    let mut server = Binary::spawn_with_config(&scratch, &quiet_config(), &[]);
    let (http, _) = server.ready();
    assert_healthy(http);
    server.signal("TERM");
    let Exit { status, output, .. } = server.wait_exit();
    assert_eq!(status.code(), Some(0), "{status}; output:\n{output}");
}

/// SIGINT (Ctrl-C) stops the server with exit code 0.
#[test]
fn sigint_stops_the_server_with_exit_code_0() {
    let scratch = Scratch::new("sigint");
    let mut server = Binary::spawn_with_config(&scratch, &quiet_config(), &[]);
    server.ready();
    server.signal("INT");
    let Exit { status, output, .. } = server.wait_exit();
    assert_eq!(status.code(), Some(0), "{status}; output:\n{output}");
}

/// On SIGTERM a connected WebSocket client receives close code 1001 before the exit.
#[test]
fn sigterm_sends_close_1001_to_websocket_clients() {
    let scratch = Scratch::new("sigterm-ws");
    let mut server = Binary::spawn_with_config(&scratch, &quiet_config(), &[]);
    let (_, ws) = server.ready();
    let mut client = ws_connect(reachable(ws), "/chats/1/ws");
    client.join("alice");
    server.signal("TERM");
    assert_eq!(client.expect_close(), 1001);
    let exit = server.wait_exit();
    assert_eq!(exit.status.code(), Some(0), "output:\n{}", exit.output);
}

// ---------------------------------------------------------------------------------------
// static_dir (configured in-process)
// ---------------------------------------------------------------------------------------

/// Files in `static_dir` are served under `/static/`.
#[test]
fn static_dir_files_are_served_under_static() {
    let scratch = Scratch::new("static");
    scratch.write("hello.txt", "hello from static\n");
    let dir = scratch.dir.clone();
    let server = TestServer::start_with(|config| config.static_dir = Some(dir));
    let response = server.get("/static/hello.txt");
    assert_eq!(response.status, 200, "body: {}", response.body);
    assert_eq!(response.body, "hello from static\n");
}

/// A path that climbs out of `static_dir` is refused and shows nothing of the file it names.
#[test]
fn static_paths_cannot_escape_the_static_dir() {
    let scratch = Scratch::new("static-escape");
    let public = scratch.dir.join("public");
    std::fs::create_dir_all(&public).unwrap();
    scratch.write("private.txt", "top secret\n");
    let server = TestServer::start_with(|config| config.static_dir = Some(public));
    for path in [
        "/static/../private.txt",
        "/static/%2e%2e/private.txt",
        "/static/..%2fprivate.txt",
    ] {
        let response = server.get(path);
        assert!(
            (400..500).contains(&response.status),
            "GET {path}: {} {}",
            response.status,
            response.body
        );
        assert!(
            !response.body.contains("top secret"),
            "GET {path} escaped static_dir"
        );
    }
}
