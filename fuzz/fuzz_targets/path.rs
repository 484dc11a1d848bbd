//! Fuzz target: `chitchat::path`, which both listeners use on every request target.
//!
//! Invariants beyond "no panic": every function is deterministic; `split` loses nothing
//! (segments and query put back together are the target, fragment dropped); `percent_decode`
//! agrees with a strict reference decoder (`%` then exactly two hex digits, UTF-8 result);
//! a `RoomRef::Id` comes from all-digit text only; `ws_room` names a room exactly for
//! `/chats/<room>/ws`; `query_param` returns the decoded value of the first `name=` pair.

#![no_main]

use chitchat::path::{percent_decode, query_param, split, ws_room, RoomRef};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let target = String::from_utf8_lossy(data);
    let target = target.as_ref();

    let (segments, query) = split(target);
    assert_eq!(
        (segments.clone(), query),
        split(target),
        "split is deterministic"
    );
    let no_fragment = target.split('#').next().unwrap_or_default();
    for segment in &segments {
        assert!(!segment.contains(['/', '?', '#']), "segment {segment:?}");
    }
    assert!(query.is_none_or(|q| !q.contains('#')));
    if no_fragment.starts_with('/') {
        let mut rebuilt = format!("/{}", segments.join("/"));
        if let Some(q) = query {
            rebuilt.push('?');
            rebuilt.push_str(q);
        }
        assert_eq!(rebuilt, no_fragment, "split loses nothing");
    }

    // The whole input and each of its segments, as a room segment and as a component.
    for raw in std::iter::once(target).chain(segments.iter().copied()) {
        let decoded = percent_decode(raw);
        assert_eq!(decoded, reference_decode(raw), "percent_decode({raw:?})");
        let room = RoomRef::from_segment(raw);
        assert_eq!(room, RoomRef::from_segment(raw));
        match (&room, &decoded) {
            (None, None) => {}
            (Some(RoomRef::Id(id)), Some(text)) => {
                assert!(text.bytes().all(|b| b.is_ascii_digit()), "id from {text:?}");
                assert_eq!(text.parse::<u64>().ok(), Some(*id));
            }
            (Some(RoomRef::Title(title)), Some(text)) => {
                assert_eq!(title, text);
                let all_digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
                // An all-digit segment too large for an id stays a title; no title is all
                // digits (SPEC, Rooms), so it names no room.
                assert!(!all_digits || text.parse::<u64>().is_err(), "{text:?}");
            }
            _ => panic!("from_segment({raw:?}) = {room:?} but decode = {decoded:?}"),
        }
    }

    let expected_room = match segments.as_slice() {
        ["chats", room, "ws"] => RoomRef::from_segment(room),
        _ => None,
    };
    assert_eq!(ws_room(target), expected_room, "ws_room({target:?})");

    if let Some(query) = query {
        let first_name = query.split('&').next().and_then(|p| p.split('=').next());
        for name in ["token", "since", "limit"].into_iter().chain(first_name) {
            let value = query_param(query, name);
            assert_eq!(value, query_param(query, name));
            let first = query
                .split('&')
                .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='));
            assert_eq!(
                value,
                first.and_then(reference_decode),
                "{name} in {query:?}"
            );
        }
    }
});

/// A strict decoder written independently: `%` must be followed by two hex digits.
fn reference_decode(raw: &str) -> Option<String> {
    let mut out = Vec::new();
    let mut bytes = raw.bytes();
    while let Some(byte) = bytes.next() {
        if byte == b'%' {
            let high = hex_digit(bytes.next()?)?;
            let low = hex_digit(bytes.next()?)?;
            out.push(high * 16 + low);
        } else {
            out.push(byte);
        }
    }
    String::from_utf8(out).ok()
}

fn hex_digit(byte: u8) -> Option<u8> {
    char::from(byte)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}
