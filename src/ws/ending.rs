//! How a socket's chat ended ([`Ending`]), and what each ending means on the wire and in
//! `/metrics`: the close frame sent ([`Ending::close_code`]), the reason it is counted
//! under ([`Ending::counted_as`]), and which ending a read error calls for
//! ([`ending_for`]). `session` decides when a chat ends; this file only maps it.

use tungstenite::error::{Error as WsError, ProtocolError};
use tungstenite::protocol::frame::coding::CloseCode;

use crate::metrics::CloseReason;

/// How the chat loop ended.
#[derive(Debug)]
pub(super) enum Ending {
    /// The client sent a close frame (its code is echoed).
    ClientClosed(CloseCode),
    /// The server closed it: slow reader, room deleted, its access changed, shutdown,
    /// backend lost.
    ServerClosed(CloseReason),
    /// A frame over `max_message_bytes`.
    TooBig,
    /// A text frame that is not UTF-8.
    NotUtf8,
    /// A violation of RFC 6455.
    ProtocolViolation,
    /// `flood_close_after` frames refused within a minute (1008).
    Flood,
    /// Nothing heard for `pong_timeout`.
    Silent,
    /// Asked to close, it did not take its pending bytes within `write_timeout`.
    Stalled,
    /// The connection broke, or was closed without a close frame.
    Gone,
}

impl Ending {
    /// The close frame to send, or `None` when nobody is there to read it.
    pub(super) fn close_code(&self) -> Option<CloseCode> {
        match self {
            Ending::ClientClosed(code) => Some(*code),
            Ending::ServerClosed(CloseReason::Backend) => Some(CloseCode::Restart),
            Ending::ServerClosed(
                CloseReason::Slow | CloseReason::Flood | CloseReason::AccessChanged,
            ) => Some(CloseCode::Policy),
            Ending::ServerClosed(CloseReason::TooBig) => Some(CloseCode::Size),
            Ending::ServerClosed(_) => Some(CloseCode::Away),
            Ending::TooBig => Some(CloseCode::Size),
            Ending::NotUtf8 => Some(CloseCode::Invalid),
            Ending::ProtocolViolation => Some(CloseCode::Protocol),
            Ending::Flood => Some(CloseCode::Policy),
            Ending::Silent => Some(CloseCode::Away),
            Ending::Stalled | Ending::Gone => None,
        }
    }

    /// The reason it is counted under; `closing` is why the server was closing it, if it
    /// was.
    pub(super) fn counted_as(&self, closing: Option<CloseReason>) -> CloseReason {
        match self {
            Ending::ServerClosed(reason) => *reason,
            Ending::Stalled => closing.unwrap_or(CloseReason::Client),
            Ending::TooBig => CloseReason::TooBig,
            Ending::Silent => CloseReason::PingTimeout,
            Ending::Flood => CloseReason::Flood,
            Ending::ClientClosed(_)
            | Ending::NotUtf8
            | Ending::ProtocolViolation
            | Ending::Gone => CloseReason::Client,
        }
    }
}

/// Which close an error from `read` calls for.
pub(super) fn ending_for(error: WsError) -> Ending {
    match error {
        WsError::Capacity(_) => Ending::TooBig,
        WsError::Utf8(_) => Ending::NotUtf8,
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Ending::Gone,
        WsError::Protocol(_) => Ending::ProtocolViolation,
        _ => Ending::Gone,
    }
}
