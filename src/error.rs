//! `ApiError`: every error a client can be told about, with the code, message and HTTP status
//! of the Go version's wire API (SPEC, "Errors").
//!
//! One `match` maps a variant to its code, message and status, so the three never drift
//! apart. The same error renders as an HTTP body ([`ApiError::to_body`]) or as a WebSocket
//! error event ([`ApiError::to_event`]). Variants carry the `field` at fault where there is
//! one. Nothing here knows about sockets or HTTP libraries.

use std::fmt;

use serde::Serialize;

/// An error reported to a client. `field` names the request field at fault, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// Which of the spec's errors this is.
    pub kind: ErrorKind,
    /// The field at fault (`title`, `secret`, `name`, ...), if one is.
    pub field: Option<&'static str>,
    /// When the client may try again, in whole seconds: the HTTP `Retry-After` header of a
    /// refusal by a limit (602, 604). Not part of the JSON body.
    pub retry_after_s: Option<u64>,
}

/// The spec's error codes that the server gives, one variant each, plus the HTTP-level
/// errors (404, 405, 413, 500), whose code is their status. (SPEC's 104, 203 and 301 are
/// kept in its table for old clients; no path of this server gives them.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 101: no room with that id or title.
    RoomNotFound,
    /// 102: another room already has that title (case-insensitively).
    DuplicateRoom,
    /// 103: a room request body that is not the JSON we expect.
    RoomInvalidJson,
    /// 104: a room token (from a password) presented to change or delete its room: it lets
    /// its holder read and chat, not change the room (SPEC, Who may change a room). Also
    /// the error event a socket gets before it is closed because its room's password or
    /// visibility changed.
    RoomUnauthorized,
    /// 105: a room field that breaks a validation rule.
    RoomInvalidContent,
    /// 201: a chat action that needs a joined name, from a socket that has none.
    UserNotFound,
    /// 202: the name is taken in this room (case-insensitively).
    DuplicateUsername,
    /// 204: a name other than the token's in a private room.
    ClientUnauthorized,
    /// 303: a body or frame that is not valid JSON, or lacks a required field.
    InvalidJson,
    /// 304: wrong or missing room password.
    Unauthorized,
    /// 305: a request the WebSocket listener cannot upgrade.
    UnsupportedClient,
    /// 401: the token's signature does not match.
    InvalidSignature,
    /// 402: the token is signed with another algorithm than HS256.
    UnauthorizedSigningMethod,
    /// 403: no token, or an expired or malformed one.
    InvalidToken,
    /// No route for this path (HTTP 404).
    NotFound,
    /// The path exists but not for this method (HTTP 405).
    MethodNotAllowed,
    /// The request body is larger than `max_body_bytes` (HTTP 413).
    BodyTooLarge,
    /// 105: a request line over 8 KiB (HTTP 414), on either listener (SPEC, Limits).
    RequestLineTooLong,
    /// 105: a request head over 32 KiB or 100 header lines (HTTP 431), on either listener.
    HeadTooLarge,
    /// A request head or body that did not arrive whole within `head_timeout_s` or
    /// `body_timeout_s` (HTTP 408, code 408 like the other HTTP-level errors).
    RequestTimeout,
    /// 601: too many WebSocket connections open, in all or from this client address
    /// (`max_connections`, `max_connections_per_ip`; HTTP 503).
    TooManyConnections,
    /// 602: too many failed token requests or room creations from this client address
    /// (`token_attempts_per_minute`, `rooms_per_minute`; HTTP 429 with `Retry-After`).
    TooManyAttempts,
    /// 603: a socket sends frames faster than `msgs_per_second` allows: an error event, and
    /// the frame is dropped (HTTP 429 is never sent; the status is for completeness).
    TooManyMessages,
    /// 604: bcrypt's queue is full (`bcrypt_queue_len`); try again in a second (HTTP 503
    /// with `Retry-After: 1`).
    ServerBusy,
    /// 605: the database refused a write (disk full, I/O error); nothing was changed, and
    /// the client may try again (HTTP 503). Also `/healthz` while the database is down.
    StorageUnavailable,
    /// 606: `max_rooms` rooms exist already; no room is created (HTTP 503).
    TooManyRooms,
    /// 607: a `POST`, `PUT` or `DELETE`, or a WebSocket handshake, from a page of another
    /// site: its `Origin` names another host than the request's and is not listed in
    /// `allowed_origins` (HTTP 403).
    OriginNotAllowed,
    /// A bug on our side, caught before it took the server down (HTTP 500).
    Internal,
}

impl ErrorKind {
    /// The error's code, message and HTTP status, in one place.
    pub fn describe(self) -> (u16, &'static str, u16) {
        use ErrorKind::*;
        match self {
            RoomNotFound => (101, "Room error: Room not found", 404),
            DuplicateRoom => (102, "Room error: Duplicate room", 400),
            RoomInvalidJson => (103, "Room error: Invalid JSON", 400),
            RoomUnauthorized => (104, "Room error: Unauthorized operation", 401),
            RoomInvalidContent => (105, "Room error: Invalid content", 400),
            UserNotFound => (201, "Client error: User not found", 404),
            DuplicateUsername => (202, "Client error: Duplicate username", 400),
            ClientUnauthorized => (204, "Client error: Unauthorized operation", 401),
            InvalidJson => (303, "Invalid JSON", 400),
            Unauthorized => (304, "Unauthorized operation", 401),
            UnsupportedClient => (305, "Unsupported client device", 400),
            InvalidSignature => (401, "Token error: Invalid signature", 401),
            UnauthorizedSigningMethod => (402, "Token error: Unauthorized signing method", 401),
            InvalidToken => (403, "Token error: Invalid token", 403),
            NotFound => (404, "Not found", 404),
            MethodNotAllowed => (405, "Method not allowed", 405),
            BodyTooLarge => (413, "Request body too large", 413),
            RequestLineTooLong => (105, "Room error: Invalid content", 414),
            HeadTooLarge => (105, "Room error: Invalid content", 431),
            RequestTimeout => (408, "Request timeout", 408),
            TooManyConnections => (601, "Limit error: Too many connections", 503),
            TooManyAttempts => (602, "Limit error: Too many attempts", 429),
            TooManyMessages => (603, "Limit error: Too many messages", 429),
            ServerBusy => (604, "Limit error: Server busy", 503),
            StorageUnavailable => (605, "Backend error: Storage unavailable", 503),
            TooManyRooms => (606, "Limit error: Too many rooms", 503),
            OriginNotAllowed => (607, "Origin not allowed", 403),
            Internal => (500, "Internal server error", 500),
        }
    }
}

impl ApiError {
    /// An error with no field at fault.
    pub fn new(kind: ErrorKind) -> Self {
        ApiError {
            kind,
            field: None,
            retry_after_s: None,
        }
    }

    /// An error blaming one request field.
    pub fn field(kind: ErrorKind, field: &'static str) -> Self {
        ApiError {
            field: Some(field),
            ..ApiError::new(kind)
        }
    }

    /// A refusal the client may retry after `seconds` (the `Retry-After` header).
    pub fn retry_after(kind: ErrorKind, seconds: u64) -> Self {
        ApiError {
            retry_after_s: Some(seconds),
            ..ApiError::new(kind)
        }
    }

    /// The spec's error code (101, 102, ...).
    pub fn code(&self) -> u16 {
        self.kind.describe().0
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        self.kind.describe().2
    }

    /// The `error` object shared by HTTP bodies and WebSocket events.
    fn detail(&self) -> ErrorDetail {
        let (code, message, _) = self.kind.describe();
        ErrorDetail {
            code,
            error: message,
            field: self.field,
        }
    }

    /// The HTTP response body: `{"status":false,"error":{...}}` and a newline, as the Go
    /// version's encoder wrote it (so `curl` output ends its line). Both listeners answer
    /// with this body: REST errors and refused WebSocket handshakes alike.
    pub fn to_body(&self) -> String {
        self.render(None) + "\n"
    }

    /// A whole HTTP/1.1 response with this error's status and JSON body, for the places
    /// that answer on a raw socket before any HTTP library has a request: a connection past
    /// the limits (503, 601) on either listener, a head past its caps or its deadline
    /// (414, 431, 408), or a request on the WebSocket port that is not an upgrade (400, 305).
    pub fn to_raw_http(&self) -> Vec<u8> {
        let body = self.to_body();
        let status = self.status();
        format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            reason_phrase(status),
            body.len()
        )
        .into_bytes()
    }

    /// The WebSocket error event, sent to the offending socket only.
    pub fn to_event(&self) -> String {
        self.render(Some("error"))
    }

    fn render(&self, event_type: Option<&'static str>) -> String {
        let body = ErrorBody {
            event_type,
            status: false,
            error: self.detail(),
        };
        serde_json::to_string(&body).expect("an error body has only strings and numbers")
    }
}

/// The standard reason phrase of the statuses errors are answered with.
fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

/// The wire shape of an error, in the Go version's field order.
#[derive(Serialize)]
struct ErrorBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    event_type: Option<&'static str>,
    status: bool,
    error: ErrorDetail,
}

#[derive(Serialize)]
struct ErrorDetail {
    code: u16,
    error: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'static str>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (code, message, _) = self.kind.describe();
        match self.field {
            Some(field) => write!(f, "{code} {message} (field {field})"),
            None => write!(f, "{code} {message}"),
        }
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parsed(text: String) -> Value {
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn body_has_code_message_and_field() {
        let err = ApiError::field(ErrorKind::DuplicateRoom, "title");
        assert_eq!(err.status(), 400);
        assert_eq!(
            err.to_body(),
            "{\"status\":false,\"error\":{\"code\":102,\"error\":\"Room error: Duplicate room\",\"field\":\"title\"}}\n"
        );
    }

    #[test]
    fn field_is_left_out_when_there_is_none() {
        let err = ApiError::new(ErrorKind::InvalidToken);
        assert_eq!(err.status(), 403);
        assert_eq!(
            parsed(err.to_event()),
            json!({"event_type":"error","status":false,"error":{"code":403,"error":"Token error: Invalid token"}})
        );
    }

    #[test]
    fn limit_errors_have_their_codes_messages_and_statuses() {
        let expected = [
            (
                ErrorKind::TooManyConnections,
                601,
                "Too many connections",
                503,
            ),
            (ErrorKind::TooManyAttempts, 602, "Too many attempts", 429),
            (ErrorKind::TooManyMessages, 603, "Too many messages", 429),
            (ErrorKind::ServerBusy, 604, "Server busy", 503),
        ];
        for (kind, code, message, status) in expected {
            assert_eq!(
                kind.describe(),
                (code, &*format!("Limit error: {message}"), status)
            );
        }
        assert_eq!(
            parsed(ApiError::retry_after(ErrorKind::ServerBusy, 1).to_body()),
            json!({"status":false,"error":{"code":604,"error":"Limit error: Server busy"}})
        );
    }

    #[test]
    fn head_refusals_are_105_with_their_statuses_and_whole_responses() {
        let raw = String::from_utf8(ApiError::new(ErrorKind::HeadTooLarge).to_raw_http()).unwrap();
        let body = r#"{"status":false,"error":{"code":105,"error":"Room error: Invalid content"}}"#;
        assert_eq!(
            raw,
            format!("HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}\n", body.len() + 1)
        );
        assert_eq!(ApiError::new(ErrorKind::RequestLineTooLong).status(), 414);
        assert_eq!(
            ErrorKind::RequestTimeout.describe(),
            (408, "Request timeout", 408)
        );
    }

    #[test]
    fn token_errors_have_their_statuses() {
        assert_eq!(ApiError::new(ErrorKind::InvalidSignature).status(), 401);
        assert_eq!(
            ApiError::new(ErrorKind::UnauthorizedSigningMethod).status(),
            401
        );
        assert_eq!(ApiError::new(ErrorKind::Unauthorized).status(), 401);
    }

    #[test]
    fn owner_and_origin_refusals_have_their_codes_and_statuses() {
        assert_eq!(
            ErrorKind::RoomUnauthorized.describe(),
            (104, "Room error: Unauthorized operation", 401)
        );
        assert_eq!(
            ErrorKind::OriginNotAllowed.describe(),
            (607, "Origin not allowed", 403)
        );
    }
}
