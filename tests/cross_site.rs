//! Cross-site requests and the page's headers (SPEC, Limits: "Cross-site requests"; issue
//! 20), and look-alike titles and names (SPEC, Rooms). Each test here failed on main, where
//! a text/plain form post from any web page created rooms, a page of any site could open a
//! socket, `GET /` sent no protection, and names and titles took zero-width characters.

mod common;

use common::{error_body, Client, TestServer};
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;

const OTHER_SITE: &str = "http://evil.example";

/// `method path` with an `Origin` header and an optional JSON body, as a browser sends it
/// for a page of that origin.
fn from_origin(
    server: &TestServer,
    origin: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> common::Response {
    let body = body.map(|b| b.to_string());
    let mut headers = vec![("Origin", origin)];
    if body.is_some() {
        // What a form post can send without asking first: not application/json.
        headers.push(("Content-Type", "text/plain"));
    }
    server.request(method, path, &headers, body.as_deref().map(str::as_bytes))
}

/// A POST, PUT or DELETE from another site's page is refused with 403, code 607, before
/// anything happens; the room list is as it was, and each refusal is counted.
#[test]
fn another_sites_page_can_create_change_or_delete_nothing() {
    let server = TestServer::start();
    let before = server.get("/chats").json();
    let room = json!({"title": "Spam", "visibility": "public"});
    let token = json!({"name": "eve", "secret": "guess"});
    for (method, path, body) in [
        ("POST", "/chats", Some(&room)),
        ("PUT", "/chats/1", Some(&room)),
        ("DELETE", "/chats/1", None),
        ("POST", "/chats/1/token", Some(&token)),
    ] {
        let refused = from_origin(&server, OTHER_SITE, method, path, body);
        assert_eq!(
            (refused.status, refused.json()),
            (403, error_body(607, None)),
            "{method} {path}"
        );
    }
    assert_eq!(server.get("/chats").json(), before);
    let metrics = server.get("/metrics").body;
    assert!(
        metrics.contains("chitchat_limit_refusals_total{limit=\"allowed_origins\"} 4"),
        "{metrics}"
    );
}

/// The server's own page (the same host on any port), a listed origin, and clients that
/// send no `Origin` at all (curl, websocat) are not refused.
#[test]
fn the_same_host_a_listed_origin_and_no_origin_are_allowed() {
    let server = TestServer::start_with(|c| {
        c.allowed_origins = vec!["https://chat.example.org".into()];
    });
    let own = format!("http://127.0.0.1:{}", server.http_addr.port());
    for (n, origin) in [
        own.as_str(),
        "http://127.0.0.1:1",
        "https://chat.example.org",
    ]
    .iter()
    .enumerate()
    {
        let room = json!({"title": format!("Room {n}"), "visibility": "public"});
        let created = from_origin(&server, origin, "POST", "/chats", Some(&room));
        assert_eq!(created.status, 201, "{origin}: {}", created.body);
    }
    let room = json!({"title": "No origin", "visibility": "public"});
    assert_eq!(server.post("/chats", &room).status, 201);
    // GET is never refused for its origin: reading is what CORS already keeps apart.
    assert_eq!(
        from_origin(&server, OTHER_SITE, "GET", "/chats", None).status,
        200
    );
}

/// A WebSocket handshake from another site's page is refused with 403, code 607; the
/// page's own (the same host, the REST port in `Origin`) is accepted.
#[test]
fn another_sites_page_cannot_open_a_socket() {
    let server = TestServer::start();
    let mut request = server.ws_url("/chats/1/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Origin", OTHER_SITE.parse().unwrap());
    match server.ws_request(request) {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_eq!(body, error_body(607, None));
        }
        other => panic!("expected a 403, got {:?}", other.map(|_| "a socket")),
    }
    let mut request = server.ws_url("/chats/1/ws").into_client_request().unwrap();
    let own = format!("http://127.0.0.1:{}", server.http_addr.port());
    request.headers_mut().insert("Origin", own.parse().unwrap());
    let mut ann: Client = server.ws_request(request).expect("the page's own socket");
    ann.join("ann");
}

/// `GET /` carries a Content-Security-Policy that runs only the page's own script and
/// style (a nonce, new for each response, that the page's tags carry), lets it talk only to
/// its own REST and WebSocket addresses and forbids framing; and nosniff, no referrer.
#[test]
fn the_page_is_served_with_a_policy_that_runs_only_its_own_code() {
    let server = TestServer::start();
    let page = server.get("/");
    assert_eq!(page.status, 200);
    let policy = page
        .header("Content-Security-Policy")
        .expect("a CSP")
        .to_owned();
    let nonce = policy
        .split("'nonce-")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .expect("a nonce in the policy");
    let ws = server.ws_addr.port();
    assert_eq!(
        policy,
        format!(
            "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
             connect-src 'self' ws://127.0.0.1:{ws} wss://127.0.0.1:{ws}; img-src 'self' data:; \
             base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
        )
    );
    assert!(page.body.contains(&format!("<script nonce=\"{nonce}\">")));
    assert!(page.body.contains(&format!("<style nonce=\"{nonce}\">")));
    assert_eq!(page.header("X-Content-Type-Options"), Some("nosniff"));
    assert_eq!(page.header("X-Frame-Options"), Some("DENY"));
    assert_eq!(page.header("Referrer-Policy"), Some("no-referrer"));
    let again = server.get("/");
    assert_ne!(
        again.header("Content-Security-Policy"),
        Some(policy.as_str())
    );
}

/// Titles with a control, format or invisible character are refused with 105 on `title`,
/// on creation and on change: "Public Chat" cannot be copied with a zero-width space.
#[test]
fn titles_with_invisible_characters_are_refused_105() {
    let server = TestServer::start();
    for title in [
        "Public\u{200B}Chat",
        "Public Chat\u{200D}",
        "\u{FEFF}Public Chat",
        "Public \u{202E}tahC",
        "Public\u{2028}Chat",
        "Public\u{3164}Chat",
        "Public\tChat",
    ] {
        let created = server.post("/chats", &json!({"title": title, "visibility": "public"}));
        assert_eq!(
            (created.status, created.json()),
            (400, error_body(105, Some("title"))),
            "{title:?}"
        );
        let changed = server.put("/chats/1", &json!({"title": title}));
        assert_eq!(changed.status, 400, "{title:?}");
    }
}

/// Names with such characters are refused with 202 on `name` (two people must not look
/// the same), in a join and in a token request; ordinary names in any script are fine.
#[test]
fn names_with_invisible_characters_are_refused_202() {
    let server = TestServer::start();
    server.create_room("Vault", "private", Some("open sesame"));
    let mut socket = server.ws("/chats/1/ws");
    for name in [
        "ann\u{200B}",
        "a\u{0301}\u{034F}nn",
        "ann\u{E0041}",
        "an\nn",
    ] {
        socket.send_json(&json!({"event_type": "join", "name": name}));
        let refused = socket.next_event();
        assert_eq!(
            refused["error"],
            error_body(202, Some("name"))["error"],
            "{name:?}"
        );
        let token = server.post(
            "/chats/Vault/token",
            &json!({"name": name, "secret": "open sesame"}),
        );
        assert_eq!(
            (token.status, token.json()),
            (400, error_body(202, Some("name"))),
            "{name:?}"
        );
    }
    socket.join("Zoë 日本");
}
