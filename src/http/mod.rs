//! The REST API and the web page over tiny_http: one route `match`, one short function per
//! endpoint, and one place where an error becomes a response.
//!
//! A request travels: worker thread -> [`route`] (method and path segments to a [`Route`],
//! or 404 / 405 with `Allow`) -> the endpoint function, which parses (bodies are read
//! through a byte cap, never trusting Content-Length), calls into `rooms` and `token`, and
//! returns `Result<Reply, ApiError>` -> [`respond`]. Handlers never write to sockets
//! themselves, and never reach the WebSocket side: a DELETE reaches live sockets through
//! the room's members.
//!
//! Limits are checked in the endpoints, before the work they guard: a room creation past
//! `rooms_per_minute`, or a token request past `token_attempts_per_minute` failures, is
//! refused before any bcrypt (429, 602, `Retry-After`); so is a request that may run
//! bcrypt (a password to hash or check) from an address with `bcrypt_per_ip` such requests
//! already in flight (429, 602, `Retry-After: 1`): the slot ([`bcrypt_slot`]) is held
//! until the request ends, so one address cannot fill the queue everyone shares; a full
//! bcrypt queue is 503 (604, `Retry-After: 1`). A body that does not arrive whole within
//! `body_timeout_s` is 408 (tiny_http's reads fail past the deadline, and it closes the
//! connection once the request is answered); caps and deadlines on the head are tiny_http's
//! (`lib.rs` sets them). `/metrics` exists only for client addresses in `metrics_allow`: any
//! other gets the 404 of an unknown path, whatever the method. Every response is counted
//! by status as it is sent.
//!
//! Layout: this file routes, replies and reads bodies, and holds the page and operator
//! endpoints; `rooms` holds the room and message endpoints; `tokens` the token endpoints
//! and the token check.

mod rooms;
mod tokens;

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Component, Path};
use std::sync::Arc;
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use tiny_http::{Header, Method, Request, Response, Server};

use crate::error::{ApiError, ErrorKind};
use crate::limits::AddressSlot;
use crate::metrics::{self, Limit, Readings};
use crate::net::any_contains;
use crate::origin;
use crate::path::{self, percent_decode, RoomRef};
use crate::web;
use crate::State;
use rooms::{create_room, delete_room, get_room, list_rooms, messages, update_room};
use tokens::{issue_token, renew_token};

/// What a request asks for, once its method and path are understood.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Page,
    Health,
    /// Any method: who may see it is decided before the method (see the module docs).
    Metrics,
    ListRooms(Option<String>),
    CreateRoom,
    GetRoom(RoomRef),
    UpdateRoom(RoomRef),
    DeleteRoom(RoomRef),
    IssueToken(RoomRef),
    RenewToken(RoomRef),
    /// The query string comes along: `since` and `limit`.
    Messages(RoomRef, Option<String>),
    StaticFile(String),
}

/// Why no route matched.
#[derive(Debug, PartialEq, Eq)]
enum Miss {
    NotFound,
    /// The path exists for these methods only (the `Allow` header).
    MethodNotAllowed(&'static str),
}

/// Maps a method and a raw path (query string included) to a route.
fn route(method: &Method, raw_path: &str) -> Result<Route, Miss> {
    let (segments, query) = path::split(raw_path);
    let get = matches!(method, Method::Get | Method::Head);
    // A room segment that does not percent-decode names no room.
    let room = |segment: &str| RoomRef::from_segment(segment).ok_or(Miss::NotFound);
    use Method::{Delete, Post, Put};
    match (segments.as_slice(), method) {
        ([""], _) if get => Ok(Route::Page),
        ([""], _) => Err(Miss::MethodNotAllowed("GET")),
        (["healthz"], _) if get => Ok(Route::Health),
        (["healthz"], _) => Err(Miss::MethodNotAllowed("GET")),
        (["metrics"], _) => Ok(Route::Metrics),
        (["chats"] | ["chats", ""], _) if get => Ok(Route::ListRooms(query.map(str::to_owned))),
        (["chats"] | ["chats", ""], Post) => Ok(Route::CreateRoom),
        (["chats"] | ["chats", ""], _) => Err(Miss::MethodNotAllowed("GET, POST")),
        (["chats", r], _) if get => Ok(Route::GetRoom(room(r)?)),
        (["chats", r], Put) => Ok(Route::UpdateRoom(room(r)?)),
        (["chats", r], Delete) => Ok(Route::DeleteRoom(room(r)?)),
        (["chats", _], _) => Err(Miss::MethodNotAllowed("GET, PUT, DELETE")),
        (["chats", r, "token"], Post) => Ok(Route::IssueToken(room(r)?)),
        (["chats", _, "token"], _) => Err(Miss::MethodNotAllowed("POST")),
        (["chats", r, "token", "renew"], _) if get => Ok(Route::RenewToken(room(r)?)),
        (["chats", _, "token", "renew"], _) => Err(Miss::MethodNotAllowed("GET")),
        (["chats", r, "messages"], _) if get => {
            Ok(Route::Messages(room(r)?, query.map(str::to_owned)))
        }
        (["chats", _, "messages"], _) => Err(Miss::MethodNotAllowed("GET")),
        (["static", rest @ ..], _) if get && !rest.is_empty() => {
            let decoded: Option<Vec<String>> = rest.iter().map(|s| percent_decode(s)).collect();
            Ok(Route::StaticFile(decoded.ok_or(Miss::NotFound)?.join("/")))
        }
        _ => Err(Miss::NotFound),
    }
}

/// A response, before it is written.
pub struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
}

impl Reply {
    /// A JSON response. A newline ends the body, as the Go version's encoder did, so
    /// `curl` output ends its line.
    fn json(status: u16, body: &impl Serialize) -> Reply {
        let mut text = serde_json::to_string(body).expect("our response types always serialise");
        text.push('\n');
        Reply::json_text(status, text)
    }

    /// A JSON response from already serialised text, newline included.
    fn json_text(status: u16, text: String) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: text.into_bytes(),
            headers: Vec::new(),
        }
    }

    fn with_header(mut self, name: &'static str, value: String) -> Reply {
        self.headers.push((name, value));
        self
    }
}

impl From<ApiError> for Reply {
    fn from(error: ApiError) -> Reply {
        let reply = Reply::json_text(error.status(), error.to_body());
        match error.retry_after_s {
            Some(seconds) => reply.with_header("Retry-After", seconds.to_string()),
            None => reply,
        }
    }
}

/// Answers one request from `server`, whatever happens in its handler. Run by an HTTP
/// worker thread (`workers`) for each request it takes.
pub fn answer(server: &Server, state: &Arc<State>, mut request: Request) {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request
        .url()
        .split('?')
        .next()
        .unwrap_or_default()
        .to_owned();
    let reply = match catch_unwind(AssertUnwindSafe(|| handle(server, state, &mut request))) {
        Ok(Ok(reply) | Err(reply)) => reply,
        Err(_) => {
            log::error!("{method} {path}: handler panicked");
            Reply::from(ApiError::new(ErrorKind::Internal))
        }
    };
    let status = reply.status;
    // Counted before it is written, so a client that has read it sees it counted.
    state.metrics.http_response(status);
    respond(request, reply);
    log::debug!(
        "{method} {path} {status} {}ms",
        started.elapsed().as_millis()
    );
}

/// Runs the endpoint for one request. Any `Err` becomes a JSON error reply here.
fn handle(server: &Server, state: &State, request: &mut Request) -> Result<Reply, Reply> {
    let route = route(request.method(), request.url()).map_err(|miss| match miss {
        Miss::NotFound => Reply::from(ApiError::new(ErrorKind::NotFound)),
        Miss::MethodNotAllowed(allow) => method_not_allowed(allow),
    })?;
    let client = client_addr(state, request);
    // SPEC, Limits: a page of another site changes nothing here, whatever it asks for.
    if matches!(
        request.method(),
        Method::Post | Method::Put | Method::Delete
    ) {
        check_origin(state, request).map_err(Reply::from)?;
    }
    let result = match route {
        Route::Page => page(state, request),
        Route::Health => health(state),
        Route::Metrics => return metrics(server, state, request, client),
        Route::ListRooms(query) => list_rooms(state, query.as_deref()),
        Route::CreateRoom => create_room(state, request, client),
        Route::GetRoom(room) => get_room(state, request, &room),
        Route::UpdateRoom(room) => update_room(state, request, &room, client),
        Route::DeleteRoom(room) => delete_room(state, request, &room, client),
        Route::IssueToken(room) => issue_token(state, request, &room, client),
        Route::RenewToken(room) => renew_token(state, request, &room),
        Route::Messages(room, query) => messages(state, request, &room, query.as_deref()),
        Route::StaticFile(name) => static_file(state, &name),
    };
    result.map_err(Reply::from)
}

/// 607 for a request whose `Origin` is another site's (`origin`), counted and logged.
fn check_origin(state: &State, request: &Request) -> Result<(), ApiError> {
    let header = |name| {
        request
            .headers()
            .iter()
            .find(|h| h.field.equiv(name))
            .map(|h| h.value.as_str())
    };
    let (origin, host) = (header("Origin"), header("Host"));
    if origin::is_allowed(origin, host, &state.config.allowed_origins) {
        return Ok(());
    }
    state.metrics.refused(Limit::AllowedOrigins);
    log::info!(
        "{} from origin {:?} refused (607)",
        request.method(),
        origin.unwrap_or_default().escape_debug().to_string()
    );
    Err(ApiError::new(ErrorKind::OriginNotAllowed))
}

fn method_not_allowed(allow: &'static str) -> Reply {
    Reply::from(ApiError::new(ErrorKind::MethodNotAllowed)).with_header("Allow", allow.into())
}

/// The client's address: the peer, or what a trusted proxy says (`limits::client_addr`).
fn client_addr(state: &State, request: &Request) -> IpAddr {
    let peer = request
        .remote_addr()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |addr| addr.ip());
    let forwarded_for = request
        .headers()
        .iter()
        .filter(|h| h.field.equiv("X-Forwarded-For"))
        .map(|h| h.value.as_str());
    state.limits.client_addr(peer, forwarded_for)
}

/// 200 while the server can serve chat; 503 (605) while its backend takes no writes.
fn health(state: &State) -> Result<Reply, ApiError> {
    if state.rooms.is_up() {
        Ok(Reply::json(200, &json!({"status": true})))
    } else {
        Err(ApiError::new(ErrorKind::StorageUnavailable))
    }
}

/// `GET /metrics`, to `metrics_allow` only: the counters, and the gauges read now.
fn metrics(
    server: &Server,
    state: &State,
    request: &Request,
    client: IpAddr,
) -> Result<Reply, Reply> {
    if !any_contains(&state.config.metrics_allow, client) {
        return Err(ApiError::new(ErrorKind::NotFound).into());
    }
    if !matches!(request.method(), Method::Get | Method::Head) {
        return Err(method_not_allowed("GET"));
    }
    let counts = state.rooms.counts();
    let readings = Readings {
        rooms: counts.rooms,
        sockets_open: state.limits.connections.open_now(),
        users_joined: counts.users_joined,
        history_queue: counts.history_queue,
        bcrypt_queue: state.hasher.queued(),
        backend_up: state.rooms.is_up(),
        tracked: state.limits.tracked(),
        http_refusals: http_refusals(server),
        http_accept_errors: server.accept_errors(),
    };
    Ok(Reply {
        status: 200,
        content_type: metrics::CONTENT_TYPE,
        body: state.metrics.render(&readings).into_bytes(),
        headers: Vec::new(),
    })
}

/// What tiny_http counted refusing on its own threads (SPEC, Limits: every refusal is
/// counted in `/metrics`).
fn http_refusals(server: &Server) -> Vec<(Limit, u64)> {
    let requests = server.request_refusals();
    vec![
        (Limit::MaxHttpConnections, server.connection_refusals()),
        (Limit::RequestLine, requests.request_line),
        (Limit::RequestHead, requests.head),
        (Limit::HeadTimeout, requests.head_timeout),
        (Limit::BodyTimeout, requests.body_timeout),
    ]
}

/// The web page, with a nonce of its own for its script and style, and the headers that
/// keep other sites from using it (SPEC, Limits: cross-site requests): a Content-Security-
/// Policy that runs only the page's own script and style and lets it talk only to this
/// server's REST and WebSocket addresses, no framing, no sniffing, no referrer.
fn page(state: &State, request: &Request) -> Result<Reply, ApiError> {
    let nonce = web::nonce().map_err(|e| {
        log::error!("cannot read random bytes for the page's nonce: {e}");
        ApiError::new(ErrorKind::Internal)
    })?;
    let host = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Host"))
        .map(|h| h.value.as_str());
    let policy = web::content_security_policy(&nonce, host, state.ws_port);
    Ok(Reply {
        status: 200,
        content_type: "text/html; charset=utf-8",
        body: web::with_nonce(&state.page, &nonce).into_bytes(),
        headers: vec![
            ("Content-Security-Policy", policy),
            ("X-Content-Type-Options", "nosniff".into()),
            ("X-Frame-Options", "DENY".into()),
            ("Referrer-Policy", "no-referrer".into()),
            ("Cache-Control", "no-store".into()),
        ],
    })
}

/// A `bcrypt_per_ip` slot for a request from `client` that will run bcrypt if `needed`
/// (a password to hash or check), held by the caller until the request ends; 429 (602,
/// `Retry-After: 1`) when its address has none to spare. Taken before the job is queued,
/// so a refused request costs no bcrypt and never waits in the queue.
fn bcrypt_slot(
    state: &State,
    client: IpAddr,
    needed: bool,
) -> Result<Option<AddressSlot>, ApiError> {
    if !needed {
        return Ok(None);
    }
    state.limits.bcrypt_job(client)
}

/// Reads and parses a JSON body of at most `max_body_bytes`. A declared or actual length
/// over the limit is 413; a body that does not arrive whole within `body_timeout_s` is 408
/// (counted); a body that does not parse is `invalid` (103 or 303).
fn read_json<T: DeserializeOwned>(
    state: &State,
    request: &mut Request,
    invalid: ErrorKind,
) -> Result<T, ApiError> {
    let limit = state.config.max_body_bytes;
    if request
        .body_length()
        .is_some_and(|declared| declared > limit)
    {
        return Err(ApiError::new(ErrorKind::BodyTooLarge));
    }
    let mut body = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    request
        .as_reader()
        .take(cap)
        .read_to_end(&mut body)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::TimedOut => {
                state.metrics.refused(Limit::BodyTimeout);
                ApiError::new(ErrorKind::RequestTimeout)
            }
            _ => ApiError::new(invalid),
        })?;
    if body.len() > limit {
        return Err(ApiError::new(ErrorKind::BodyTooLarge));
    }
    let value: Value = serde_json::from_slice(&body).map_err(|_| ApiError::new(invalid))?;
    if !value.is_object() {
        return Err(ApiError::new(invalid));
    }
    serde_json::from_value(value).map_err(|_| ApiError::new(invalid))
}

/// Serves a file from `static_dir`, refusing any path that could leave it.
///
/// Two checks: the name may hold only plain components (no `..`, no root), and the file it
/// leads to, once every symbolic link is resolved, must lie inside the directory (itself
/// resolved). So a link inside `static_dir` that points at `/etc/passwd` is a 404, the same
/// answer as a missing file, while a link to another file inside is served.
fn static_file(state: &State, name: &str) -> Result<Reply, ApiError> {
    let not_found = || ApiError::new(ErrorKind::NotFound);
    let dir = state.config.static_dir.as_deref().ok_or_else(not_found)?;
    let relative = Path::new(name);
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(not_found());
    }
    let dir = dir.canonicalize().map_err(|_| not_found())?;
    let file = dir.join(relative).canonicalize().map_err(|_| not_found())?;
    if !file.starts_with(&dir) {
        log::info!("static file {name:?} leads out of static_dir: refused");
        return Err(not_found());
    }
    let body = std::fs::read(&file).map_err(|_| not_found())?;
    let content_type = match relative.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css",
        Some("js") => "text/javascript",
        Some("json") => "application/json",
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        Some("ico") => "image/x-icon",
        _ => "application/octet-stream",
    };
    Ok(Reply {
        status: 200,
        content_type,
        body,
        headers: Vec::new(),
    })
}

/// Writes `reply`. A client that went away is not an error worth more than a debug line.
fn respond(request: Request, reply: Reply) {
    let mut response = Response::from_data(reply.body).with_status_code(reply.status);
    let headers =
        std::iter::once(("Content-Type", reply.content_type.to_owned())).chain(reply.headers);
    for (name, value) in headers {
        if let Ok(header) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response.add_header(header);
        }
    }
    if let Err(e) = request.respond(response) {
        log::debug!("writing a response failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_method_and_segments() {
        assert_eq!(
            route(&Method::Get, "/chats/1"),
            Ok(Route::GetRoom(RoomRef::Id(1)))
        );
        assert_eq!(
            route(&Method::Get, "/chats/My%20chat%20room?x=1"),
            Ok(Route::GetRoom(RoomRef::Title("My chat room".into())))
        );
        assert_eq!(
            route(&Method::Post, "/chats/2/token"),
            Ok(Route::IssueToken(RoomRef::Id(2)))
        );
        assert_eq!(
            route(&Method::Patch, "/chats/2"),
            Err(Miss::MethodNotAllowed("GET, PUT, DELETE"))
        );
        assert_eq!(
            route(&Method::Get, "/chats/2/messages?since=3"),
            Ok(Route::Messages(RoomRef::Id(2), Some("since=3".into())))
        );
        assert_eq!(
            route(&Method::Post, "/chats/2/messages"),
            Err(Miss::MethodNotAllowed("GET"))
        );
        assert_eq!(route(&Method::Get, "/nope"), Err(Miss::NotFound));
        assert_eq!(route(&Method::Post, "/metrics"), Ok(Route::Metrics));
        assert_eq!(route(&Method::Get, "/chats/%zz"), Err(Miss::NotFound));
    }
}
