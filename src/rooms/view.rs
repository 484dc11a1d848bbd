//! What the API shows of a room: [`RoomView`] and [`UserView`], and the [`Visibility`]
//! both sides share. The stored room (with its bcrypt hash) lives in `catalog` and has no
//! `Serialize`; only these types do, so the hash cannot leak by construction (the Go
//! version returned it in every response).

use serde::Serialize;

/// Who may see and enter a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Listed; anyone may enter.
    Public,
    /// Listed; a token (from the room's password) is needed to enter.
    Private,
    /// Like private, but never listed: reached by exact title or id.
    Hidden,
}

impl Visibility {
    /// Parses `public`, `private` or `hidden`, in any case.
    pub fn parse(text: &str) -> Option<Visibility> {
        match text.trim().to_ascii_lowercase().as_str() {
            "public" => Some(Visibility::Public),
            "private" => Some(Visibility::Private),
            "hidden" => Some(Visibility::Hidden),
            _ => None,
        }
    }

    /// The lower-case name, as on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Private => "private",
            Visibility::Hidden => "hidden",
        }
    }

    /// Whether entering or changing the room needs a token.
    pub fn needs_token(self) -> bool {
        self != Visibility::Public
    }
}

/// A room as clients see it.
#[derive(Debug, Clone, Serialize)]
pub struct RoomView {
    pub id: u64,
    pub title: String,
    pub description: String,
    pub visibility: Visibility,
    #[serde(rename = "createdAt")]
    pub created_at: String,
    #[serde(rename = "updatedAt")]
    pub updated_at: String,
    /// The people joined right now; left out of private rooms for callers without a token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<UserView>>,
}

/// A joined person as clients see them.
#[derive(Debug, Clone, Serialize)]
pub struct UserView {
    pub username: String,
    pub color: String,
    pub last_activity: String,
}

/// What checking access to a room needs, copied out so tokens and passwords are verified
/// without holding any lock.
#[derive(Debug, Clone)]
pub struct RoomKey {
    pub id: u64,
    pub visibility: Visibility,
    /// The bcrypt hash, part of the room's token signing key.
    pub password_hash: Option<String>,
    /// When the room was created (RFC 3339), part of its owner tokens' signing key: a room
    /// made again with the same id is another room (`token`).
    pub created_at: String,
}
