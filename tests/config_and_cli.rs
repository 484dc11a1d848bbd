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

use common::{error_body, http_request, ws_connect, Binary, Exit, Response, Scratch, TestServer};
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

/// Through start, requests, a chat and shutdown, even at `debug`, stdout carries exactly one
/// line, the ready line; every log line goes to stderr ("prints one line when it is ready").
#[test]
fn stdout_carries_only_the_ready_line() {
    let scratch = Scratch::new("stdout-only-ready");
    let mut config = quiet_config();
    config["log_level"] = json!("debug");
    let mut server = Binary::spawn_with_config(&scratch, &config, &[]);
    let (http, ws) = server.ready();
    assert_healthy(http);
    assert_eq!(get(http, "/nope").status, 404);
    let mut client = ws_connect(reachable(ws), "/chats/1/ws");
    client.join("alice");
    server.signal("TERM");
    assert_eq!(client.expect_close(), 1001);
    let exit = server.wait_exit();
    assert_eq!(exit.status.code(), Some(0), "output:\n{}", exit.output);
    // The output is both streams interleaved; stdout is what is left after taking out
    // the stderr lines.
    let mut stderr: Vec<&str> = exit.stderr.lines().collect();
    let mut stdout = vec![];
    for line in exit.output.lines() {
        match stderr.iter().position(|l| *l == line) {
            Some(i) => drop(stderr.remove(i)),
            None => stdout.push(line),
        }
    }
    assert_eq!(stdout.len(), 1, "stdout:\n{}", stdout.join("\n"));
    assert!(stdout[0].contains(" started at http://"), "{stdout:?}");
    assert!(
        exit.stderr.lines().count() > 3,
        "no debug log on stderr:\n{}",
        exit.stderr
    );
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

/// `--version` prints `chitchat <version>` on stdout, nothing else, and exits 0 without
/// reading any configuration (here a broken `./config.json` that would stop start-up).
#[test]
fn version_flag_prints_the_version_and_exits_0() {
    let scratch = Scratch::new("version");
    scratch.write("config.json", r#"{"no_such_key": true}"#);
    let Exit { status, output, .. } = Binary::spawn(&scratch, &["--version"], &[]).wait_exit();
    assert_eq!(status.code(), Some(0), "output:\n{output}");
    assert_eq!(output, format!("chitchat {}\n", env!("CARGO_PKG_VERSION")));
}

/// `--help` exits 0 and its usage names `--config` and `--version`.
#[test]
fn help_flag_names_config_and_version() {
    let scratch = Scratch::new("help");
    let Exit { status, output, .. } = Binary::spawn(&scratch, &["--help"], &[]).wait_exit();
    assert_eq!(status.code(), Some(0), "output:\n{output}");
    for flag in ["--config", "--version"] {
        assert!(
            output.contains(flag),
            "--help does not name {flag}:\n{output}"
        );
    }
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

/// Without `--config` and without `./config.json` the server runs on the built-in defaults
/// ("every key is optional"), and an info line says so. `PORT` and `WS_PORT` (0: any free
/// port) keep it off 8080 and 8081, which another server on this machine may hold.
#[test]
fn missing_default_config_file_means_the_defaults_with_an_info_line() {
    let scratch = Scratch::new("no-default-config");
    let mut server = Binary::spawn(&scratch, &[], &[("PORT", "0"), ("WS_PORT", "0")]);
    let (http, ws) = server.ready();
    server.wait_for_line("an info line about the defaults", |l| {
        !l.stdout && l.text.contains("INFO") && l.text.contains("built-in defaults")
    });
    assert_healthy(http);
    let mut client = ws_connect(reachable(ws), "/chats/1/ws");
    client.join("alice");
    // The default `db_path` and `log_file`, relative to the working directory.
    assert!(scratch.path("chitchat.db").exists(), "no chitchat.db");
    assert!(scratch.path("chitchat.log").exists(), "no chitchat.log");
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

/// The Go version's config.json (its keys, and the `RedisURL` it ships but never used) starts
/// a one-node server unchanged (SPEC, Running): `RedisURL` is ignored with a warning naming
/// `redis_url`, and the rooms live in SQLite. Only the address differs, to get a free port.
#[test]
fn go_config_json_with_redis_url_starts_one_node_and_warns_naming_redis_url() {
    let scratch = Scratch::new("go-config");
    std::fs::create_dir_all(scratch.path("public")).expect("create public/");
    let config = json!({
        "Address": "127.0.0.1:0",
        "ReadTimeout": 10,
        "WriteTimeout": 600,
        "Static": "public",
        "RedisURL": "127.0.0.1:6379",
    });
    let mut server = Binary::spawn_with_config(&scratch, &config, &[("WS_PORT", "0")]);
    let (http, _) = server.ready();
    let warning = server.wait_for_line("a warning about RedisURL", |l| {
        l.text.contains("WARN") && l.text.contains("RedisURL")
    });
    assert!(
        warning.text.contains("`redis_url`"),
        "the warning does not name redis_url: {}",
        warning.text
    );
    assert_healthy(http);
    assert!(
        scratch.path("chitchat.db").exists(),
        "no chitchat.db: not one node"
    );
}

/// `redis_url` also takes `host:port` (db 0): a node whose Redis cannot be reached still
/// starts, says so, and answers `/healthz` with 503 and code 605 (tests/cluster.rs covers a
/// real Redis).
#[cfg(feature = "redis")]
#[test]
fn redis_url_as_host_and_port_is_used_and_an_unreachable_redis_makes_healthz_503() {
    let scratch = Scratch::new("redis-url");
    let mut config = quiet_config();
    // Port 1 on the loopback: nothing listens there, so the connection is refused at once.
    config["redis_url"] = json!("127.0.0.1:1");
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

/// A server built without the `redis` feature never runs one node while its config names a
/// Redis: `redis_url` stops start-up with exit code 2, naming the file and the key.
#[cfg(not(feature = "redis"))]
#[test]
fn redis_url_exits_2_in_a_build_without_redis() {
    let scratch = Scratch::new("redis-url-no-redis");
    let mut config = quiet_config();
    config["redis_url"] = json!("redis://127.0.0.1:6379/0");
    let config = scratch.config("config.json", &config);
    assert_exits_2_naming(
        &scratch,
        &["--config", &config],
        &[],
        &[&config, "redis_url", "without Redis"],
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

/// `--config config.json` names the default file explicitly: if it is missing, that is exit
/// code 2 naming it, not the defaults (only the implicit default may be absent).
#[test]
fn missing_config_file_named_with_the_flag_exits_2_even_if_it_is_the_default_name() {
    let scratch = Scratch::new("explicit-missing");
    assert_exits_2_naming(
        &scratch,
        &["--config", "config.json"],
        &[],
        &["config.json"],
    );
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
    // Each logger stamps its own copy of a line: across a second boundary the two times
    // differ, so lines are compared after their `HH:MM:SS` stamp.
    let unstamped = |line: &str| line.split_once(' ').map_or("", |(_, rest)| rest).to_owned();
    for line in written.lines() {
        assert!(
            console.lines().any(|c| unstamped(c) == unstamped(line)),
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

/// A symbolic link inside `static_dir` that leads out of it (here to /etc/passwd) is a 404
/// with the JSON not-found body, the same answer as a missing file, and shows nothing of
/// the file: static_dir serves nothing outside itself.
#[test]
fn static_symlink_leading_out_of_the_static_dir_is_not_found() {
    let scratch = Scratch::new("static-link-out");
    let public = scratch.path("public");
    std::fs::create_dir_all(&public).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", public.join("passwd")).unwrap();
    std::os::unix::fs::symlink("/etc", public.join("etc")).unwrap();
    let server = TestServer::start_with(|config| config.static_dir = Some(public));
    for path in [
        "/static/passwd",
        "/static/etc/passwd",
        "/static/missing.txt",
    ] {
        let response = server.get(path);
        assert_eq!(response.status, 404, "GET {path}: {}", response.body);
        assert_eq!(response.json(), error_body(404, None), "GET {path}");
    }
}

/// A symbolic link that stays inside `static_dir` is served like the file it names.
#[test]
fn static_symlink_to_a_file_inside_the_static_dir_is_served() {
    let scratch = Scratch::new("static-link-in");
    let public = scratch.path("public");
    std::fs::create_dir_all(public.join("css")).unwrap();
    std::fs::write(public.join("css/site.css"), "body {}\n").unwrap();
    std::os::unix::fs::symlink("css/site.css", public.join("style.css")).unwrap();
    let server = TestServer::start_with(|config| config.static_dir = Some(public));
    let response = server.get("/static/style.css");
    assert_eq!(response.status, 200, "body: {}", response.body);
    assert_eq!(response.header("Content-Type"), Some("text/css"));
    assert_eq!(response.body, "body {}\n");
}

/// `static_dir` may itself be reached through a symbolic link (`/srv/www -> /data/www`):
/// its files are inside it once both are resolved.
#[test]
fn static_dir_behind_a_symlink_still_serves_its_files() {
    let scratch = Scratch::new("static-dir-link");
    let real = scratch.path("real");
    std::fs::create_dir_all(&real).unwrap();
    std::fs::write(real.join("hello.txt"), "hello\n").unwrap();
    let link = scratch.path("www");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let server = TestServer::start_with(|config| config.static_dir = Some(link));
    let response = server.get("/static/hello.txt");
    assert_eq!(response.status, 200, "body: {}", response.body);
    assert_eq!(response.body, "hello\n");
}

/// A `..` in the path is a 404 with the JSON not-found body, the same as a missing file.
#[test]
fn static_path_with_dot_dot_is_not_found() {
    let scratch = Scratch::new("static-dot-dot");
    let public = scratch.path("public");
    std::fs::create_dir_all(&public).unwrap();
    scratch.write("private.txt", "top secret\n");
    let server = TestServer::start_with(|config| config.static_dir = Some(public));
    for path in ["/static/../private.txt", "/static/%2e%2e/private.txt"] {
        let response = server.get(path);
        assert_eq!(response.status, 404, "GET {path}: {}", response.body);
        assert_eq!(response.json(), error_body(404, None), "GET {path}");
    }
}

/// The value of `name` in the environment the running process `pid` started with. glibc,
/// reading `GLIBC_TUNABLES`, ends each tunable's value it takes with a NUL in place, so
/// the entries that follow it and name a `glibc.` tunable are joined back with `:`.
fn environment_of(pid: u32, name: &str) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("read /proc/PID/environ");
    let entries: Vec<String> = environ
        .split(|b| *b == 0)
        .map(|entry| String::from_utf8_lossy(entry).into_owned())
        .collect();
    let at = entries
        .iter()
        .position(|e| e.starts_with(&format!("{name}=")))?;
    let mut value = entries[at][name.len() + 1..].to_owned();
    for tunable in entries[at + 1..]
        .iter()
        .take_while(|e| e.starts_with("glibc."))
    {
        value = format!("{value}:{tunable}");
    }
    Some(value)
}

/// The server runs with glibc's per-thread malloc caches off and one arena per core (it
/// re-executes itself with `GLIBC_TUNABLES` set), which more than halves what an idle
/// socket costs at scale (issues 13 and 22); it keeps its process id, so a service manager
/// sees one process.
#[test]
fn the_server_runs_with_the_malloc_tunables_it_needs() {
    let scratch = Scratch::new("tunables");
    let mut server = Binary::spawn_with_config(&scratch, &quiet_config(), &[]);
    server.ready();
    let arenas = std::thread::available_parallelism().unwrap().get().max(2);
    assert_eq!(
        environment_of(server.pid(), "GLIBC_TUNABLES").as_deref(),
        Some(
            format!(
                "glibc.malloc.tcache_count=0:glibc.malloc.arena_max={arenas}:\
                 glibc.rtld.nns=1:glibc.rtld.optional_static_tls=0"
            )
            .as_str()
        )
    );
    server.signal("TERM");
    assert_eq!(server.wait_exit().status.code(), Some(0));
}

/// An operator's own `GLIBC_TUNABLES` is kept as it is.
#[test]
fn an_operators_glibc_tunables_are_kept() {
    let scratch = Scratch::new("own-tunables");
    let own = [("GLIBC_TUNABLES", "glibc.malloc.arena_max=4")];
    let mut server = Binary::spawn_with_config(&scratch, &quiet_config(), &own);
    server.ready();
    assert_eq!(
        environment_of(server.pid(), "GLIBC_TUNABLES").as_deref(),
        Some("glibc.malloc.arena_max=4")
    );
    server.signal("TERM");
    assert_eq!(server.wait_exit().status.code(), Some(0));
}
