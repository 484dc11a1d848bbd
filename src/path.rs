//! Request paths, parsed once for both listeners: the segments of `/chats/<room>/...`, the
//! room a segment names, and query parameters.
//!
//! A room is addressed by its id or by its title, percent-decoded and matched
//! case-insensitively (`/chats/7`, `/chats/My%20chat%20room`). Titles are never all digits
//! (SPEC, Rooms), so an all-digit segment is always an id. Nothing here allocates more than
//! the decoded title, and malformed escapes name no room rather than a wrong one.

/// How a path names a room: digits are an id, anything else a title.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomRef {
    /// A room id.
    Id(u64),
    /// A title, matched case-insensitively.
    Title(String),
}

impl RoomRef {
    /// Reads a raw path segment (`7`, `My%20chat%20room`); `None` if its escapes are
    /// malformed.
    pub fn from_segment(raw: &str) -> Option<RoomRef> {
        let segment = percent_decode(raw)?;
        Some(match segment.parse::<u64>() {
            Ok(id) if segment.bytes().all(|b| b.is_ascii_digit()) => RoomRef::Id(id),
            _ => RoomRef::Title(segment),
        })
    }
}

/// A raw request target split into its path segments (after the leading `/`, still
/// escaped) and its query string, if any. `/chats/7/ws?token=x` is
/// `(["chats", "7", "ws"], Some("token=x"))`.
pub fn split(target: &str) -> (Vec<&str>, Option<&str>) {
    let target = target.split('#').next().unwrap_or_default();
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    (path.split('/').skip(1).collect(), query)
}

/// The room in a WebSocket path, `/chats/<room>/ws`; `None` for any other path.
pub fn ws_room(target: &str) -> Option<RoomRef> {
    match split(target).0.as_slice() {
        ["chats", room, "ws"] => RoomRef::from_segment(room),
        _ => None,
    }
}

/// The percent-decoded value of the first `name=value` pair in `query`.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        .and_then(percent_decode)
}

/// Decodes `%XX` escapes in one URL component; `None` if they are malformed or the result
/// is not UTF-8.
pub fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        if byte == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            // `from_str_radix` alone takes a sign: `%+7` would decode to byte 7.
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(byte);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_refs_read_digits_as_ids() {
        assert_eq!(RoomRef::from_segment("12"), Some(RoomRef::Id(12)));
        assert_eq!(
            RoomRef::from_segment("My%20chat"),
            Some(RoomRef::Title("My chat".into()))
        );
        assert_eq!(
            RoomRef::from_segment("+12"),
            Some(RoomRef::Title("+12".into()))
        );
        assert_eq!(RoomRef::from_segment("%zz"), None);
    }

    #[test]
    fn percent_decoding_handles_utf8_and_rejects_junk() {
        assert_eq!(percent_decode("caf%C3%A9").as_deref(), Some("café"));
        assert_eq!(percent_decode("a%2"), None);
        assert_eq!(percent_decode("%FF"), None);
        assert_eq!(percent_decode("%%"), None);
    }

    /// Found by the `path` fuzz target (fuzz/fuzz_targets/path.rs) with the target
    /// `:/c\0(a\xf4s%+72w/...`: `u8::from_str_radix` accepts a leading `+`, so `%+7`
    /// decoded to byte 7 and `/chats/%+41` named the room "A" instead of none.
    #[test]
    fn an_escape_with_a_sign_is_malformed() {
        assert_eq!(percent_decode("%+7"), None);
        assert_eq!(percent_decode("s%+72w"), None);
        assert_eq!(percent_decode("%-1"), None);
        assert_eq!(RoomRef::from_segment("%+41"), None);
        assert_eq!(query_param("token=a%+2Eb", "token"), None);
    }

    #[test]
    fn targets_split_into_segments_and_query() {
        assert_eq!(
            split("/chats/7/ws?token=x"),
            (vec!["chats", "7", "ws"], Some("token=x"))
        );
        assert_eq!(split("/"), (vec![""], None));
        assert_eq!(split("/chats#frag"), (vec!["chats"], None));
    }

    #[test]
    fn only_the_ws_path_names_a_room() {
        assert_eq!(ws_room("/chats/3/ws"), Some(RoomRef::Id(3)));
        assert_eq!(
            ws_room("/chats/My%20room/ws?token=t"),
            Some(RoomRef::Title("My room".into()))
        );
        assert_eq!(ws_room("/chats/3"), None);
        assert_eq!(ws_room("/chats/3/ws/x"), None);
    }

    #[test]
    fn query_params_are_found_and_decoded() {
        assert_eq!(
            query_param("a=1&token=abc.def", "token").as_deref(),
            Some("abc.def")
        );
        assert_eq!(
            query_param("since=4&limit=%32", "limit").as_deref(),
            Some("2")
        );
        assert_eq!(query_param("tokens=1", "token"), None);
        assert_eq!(query_param("a=1", "token"), None);
    }
}
