//! What a room is, and what a valid one is, for both backends: [`Info`] (a room's stored
//! description, with its bcrypt hash: never serialised, see `view`), the request body
//! [`RoomInput`], its validation (SPEC, Rooms), and [`Patch`], a validated change.
//!
//! bcrypt runs here ([`hash_for`]), so every caller runs it before taking any lock.

use serde::Deserialize;

use crate::clock::now_rfc3339;
use crate::error::{ApiError, ErrorKind};
use crate::hasher::Hasher;
use crate::store::RoomRecord;

use super::view::{RoomView, UserView, Visibility};

/// Title length bounds, in characters after trimming (SPEC, Rooms).
pub const TITLE_CHARS: std::ops::RangeInclusive<usize> = 2..=70;
/// The longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 70;
/// The shortest password of a private or hidden room, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// bcrypt reads at most 72 bytes; longer passwords are refused rather than cut silently.
pub const MAX_PASSWORD_BYTES: usize = 72;

/// A room's stored description. Never serialised: see `view`.
#[derive(Debug, Clone)]
pub struct Info {
    pub id: u64,
    pub title: String,
    pub description: String,
    pub visibility: Visibility,
    /// bcrypt hash of the password; `Some` exactly when the room is private or hidden.
    pub password_hash: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Counts the changes made in this process (one node), so an update can tell whether
    /// the room changed while it was hashing.
    pub revision: u64,
}

impl Info {
    /// A room read back from the database.
    pub fn restore(record: RoomRecord) -> Result<Info, String> {
        let visibility = Visibility::parse(&record.visibility).ok_or_else(|| {
            format!(
                "room {} has an unknown visibility {:?}",
                record.id, record.visibility
            )
        })?;
        Ok(Info {
            id: record.id,
            title: record.title,
            description: record.description,
            visibility,
            password_hash: record.password_hash,
            created_at: record.created_at,
            updated_at: record.updated_at,
            revision: 0,
        })
    }

    /// The room as clients see it, with `users` when they may see them.
    pub fn view(&self, users: Option<Vec<UserView>>) -> RoomView {
        RoomView {
            id: self.id,
            title: self.title.clone(),
            description: self.description.clone(),
            visibility: self.visibility,
            created_at: self.created_at.clone(),
            updated_at: self.updated_at.clone(),
            users,
        }
    }

    /// Whether entering this room asks for something else than entering `before` did: a
    /// new visibility, or a new password (even the same one again: its new hash makes every
    /// token of the old one invalid).
    pub fn access_differs(&self, before: &Info) -> bool {
        self.visibility != before.visibility || self.password_hash != before.password_hash
    }

    /// The room as the database stores it.
    pub fn record(&self) -> RoomRecord {
        RoomRecord {
            id: self.id,
            title: self.title.clone(),
            description: self.description.clone(),
            visibility: self.visibility.as_str().into(),
            password_hash: self.password_hash.clone(),
            created_at: self.created_at.clone(),
            updated_at: self.updated_at.clone(),
        }
    }
}

/// An update's validated fields: those present change, the others stay.
#[derive(Debug, Clone, Default)]
pub struct Patch {
    pub title: Option<String>,
    pub description: Option<String>,
    pub visibility: Option<Visibility>,
    /// The new password, hashed by [`Patch::apply`].
    pub password: Option<String>,
}

/// The body of `POST /chats` and `PUT /chats/<room>`; every field optional so that a
/// missing one is reported by name. Unknown fields are ignored, as the Go version did, so
/// a client may send back a room it fetched.
#[derive(Debug, Default, Deserialize)]
pub struct RoomInput {
    pub title: Option<String>,
    pub description: Option<String>,
    pub visibility: Option<String>,
    pub password: Option<String>,
}

impl RoomInput {
    /// The fields of a new room, validated: title, description, visibility.
    pub fn new_room(&self) -> Result<(String, String, Visibility), ApiError> {
        Ok((
            validate_title(self.title.as_deref())?,
            validate_description(self.description.as_deref())?,
            validate_visibility(self.visibility.as_deref())?,
        ))
    }

    /// The fields a change names, for the log: `title, visibility private, password`
    /// (a new visibility is shown; titles and descriptions are people's text and a
    /// password is never shown, so only their names are).
    pub fn changed_fields(&self) -> String {
        let mut fields = Vec::new();
        if self.title.is_some() {
            fields.push("title".to_owned());
        }
        if self.description.is_some() {
            fields.push("description".to_owned());
        }
        if let Some(visibility) = self.visibility.as_deref().and_then(Visibility::parse) {
            fields.push(format!("visibility {}", visibility.as_str()));
        }
        if self.password.is_some() {
            fields.push("password".to_owned());
        }
        match fields.is_empty() {
            true => "nothing".to_owned(),
            false => fields.join(", "),
        }
    }

    /// The fields present, validated, as a change to a room.
    pub fn patch(self) -> Result<Patch, ApiError> {
        Ok(Patch {
            title: self
                .title
                .as_deref()
                .map(|t| validate_title(Some(t)))
                .transpose()?,
            description: self
                .description
                .as_deref()
                .map(|d| validate_description(Some(d)))
                .transpose()?,
            visibility: self
                .visibility
                .as_deref()
                .map(|v| validate_visibility(Some(v)))
                .transpose()?,
            password: self.password,
        })
    }
}

impl Patch {
    /// `current` with this change applied, its new password hashed by `hasher` (no lock
    /// may be held: bcrypt takes tens of milliseconds).
    pub fn apply(&self, current: &Info, hasher: &Hasher) -> Result<Info, ApiError> {
        let mut info = current.clone();
        if let Some(title) = &self.title {
            info.title.clone_from(title);
        }
        if let Some(description) = &self.description {
            info.description.clone_from(description);
        }
        info.visibility = self.visibility.unwrap_or(current.visibility);
        info.password_hash = hash_for(
            hasher,
            info.visibility,
            self.password.as_deref(),
            current.password_hash.clone(),
        )?;
        info.updated_at = now_rfc3339();
        info.revision += 1;
        Ok(info)
    }
}

/// The room's hash for `visibility`: `None` for public rooms (which must not be given a
/// password), a fresh hash of `password`, or `current` kept. Runs bcrypt: never under a
/// lock.
pub fn hash_for(
    hasher: &Hasher,
    visibility: Visibility,
    password: Option<&str>,
    current: Option<String>,
) -> Result<Option<String>, ApiError> {
    match (visibility, password) {
        (Visibility::Public, Some(_)) => Err(invalid("visibility")),
        (Visibility::Public, None) => Ok(None),
        (_, Some(password)) => {
            if password.chars().count() < MIN_PASSWORD_CHARS || password.len() > MAX_PASSWORD_BYTES
            {
                return Err(invalid("password"));
            }
            // A full bcrypt queue is 604 (`?`); bcrypt refusing the password, 105.
            hasher
                .hash(password)?
                .map(Some)
                .ok_or_else(|| invalid("password"))
        }
        (_, None) => current.map(Some).ok_or_else(|| invalid("password")),
    }
}

/// 101: no such room (or, with several nodes, not any more).
pub fn not_found() -> ApiError {
    ApiError::new(ErrorKind::RoomNotFound)
}

fn invalid(field: &'static str) -> ApiError {
    ApiError::field(ErrorKind::RoomInvalidContent, field)
}

fn validate_title(title: Option<&str>) -> Result<String, ApiError> {
    let title = title.map(str::trim).unwrap_or_default();
    let all_digits = !title.is_empty() && title.chars().all(|c| c.is_ascii_digit());
    // No invisible characters: two rooms must not look the same (`crate::visible`).
    let visible = crate::visible::is_visible(title);
    if !TITLE_CHARS.contains(&title.chars().count()) || all_digits || !visible {
        return Err(invalid("title"));
    }
    Ok(title.to_owned())
}

fn validate_description(description: Option<&str>) -> Result<String, ApiError> {
    let description = description.map(str::trim).unwrap_or_default();
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(invalid("description"));
    }
    Ok(description.to_owned())
}

fn validate_visibility(visibility: Option<&str>) -> Result<Visibility, ApiError> {
    visibility
        .and_then(Visibility::parse)
        .ok_or_else(|| invalid("visibility"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_checked() {
        assert_eq!(validate_title(Some("  ab  ")).unwrap(), "ab");
        for bad in [
            None,
            Some("a"),
            Some("12345"),
            Some(&*"x".repeat(71)),
            Some("Public\u{200B}Chat"),
            Some("Public\u{202E}Chat"),
        ] {
            assert_eq!(validate_title(bad).unwrap_err().field, Some("title"));
        }
    }

    #[test]
    fn descriptions_and_visibilities_are_checked() {
        assert_eq!(validate_description(None).unwrap(), "");
        assert!(validate_description(Some(&"é".repeat(71))).is_err());
        assert_eq!(
            validate_visibility(Some("HIDDEN")).unwrap(),
            Visibility::Hidden
        );
        assert_eq!(
            validate_visibility(Some("secret")).unwrap_err().field,
            Some("visibility")
        );
    }
}
