//! What a room title or a user name may not contain (SPEC, Rooms): characters that show
//! nothing, so that two rooms or two people cannot look the same ("Public Chat" and
//! "Public\u{200B}Chat"), and that nobody can hide text or flip its direction.
//!
//! Refused: Unicode's control characters (Cc), format characters (Cf: zero-width spaces
//! and joiners, direction marks and overrides, the byte order mark, tags...), the line
//! and paragraph separators (Zl, Zp), and the other characters that render as nothing
//! though Unicode files them elsewhere (fillers, variation selectors, the combining
//! grapheme joiner). The ranges are written out by hand from Unicode 16's tables (the
//! `General_Category` of UnicodeData.txt, and `Default_Ignorable_Code_Point` of
//! DerivedCoreProperties.txt for the rest): a few lines here cost less than a crate of
//! tables, and they change seldom. Ordinary spaces between words stay allowed.

/// Inclusive ranges of code points a title or name may not contain, in order.
const INVISIBLE: &[(u32, u32)] = &[
    (0x0000, 0x001F),   // Cc: C0 controls
    (0x007F, 0x009F),   // Cc: DEL and C1 controls
    (0x00AD, 0x00AD),   // Cf: soft hyphen
    (0x034F, 0x034F),   // combining grapheme joiner (Mn, default ignorable)
    (0x0600, 0x0605),   // Cf: Arabic number signs
    (0x061C, 0x061C),   // Cf: Arabic letter mark
    (0x06DD, 0x06DD),   // Cf: Arabic end of ayah
    (0x070F, 0x070F),   // Cf: Syriac abbreviation mark
    (0x0890, 0x0891),   // Cf: Arabic pound and piastre marks above
    (0x08E2, 0x08E2),   // Cf: Arabic disputed end of ayah
    (0x115F, 0x1160),   // Hangul choseong and jungseong fillers (Lo, invisible)
    (0x17B4, 0x17B5),   // Khmer inherent vowels (Mn, default ignorable)
    (0x180B, 0x180F),   // Mongolian variation selectors and vowel separator (Cf)
    (0x200B, 0x200F),   // Cf: zero-width space, (non-)joiner, LRM, RLM
    (0x2028, 0x2029),   // Zl, Zp: line and paragraph separators
    (0x202A, 0x202E),   // Cf: bidirectional embeddings and overrides
    (0x2060, 0x206F),   // Cf: word joiner, invisible operators, bidi isolates
    (0x3164, 0x3164),   // Hangul filler (Lo, invisible)
    (0xFE00, 0xFE0F),   // variation selectors (Mn, default ignorable)
    (0xFEFF, 0xFEFF),   // Cf: zero-width no-break space, byte order mark
    (0xFFA0, 0xFFA0),   // halfwidth Hangul filler (Lo, invisible)
    (0xFFF0, 0xFFFB),   // unassigned, and Cf: interlinear annotation
    (0x110BD, 0x110BD), // Cf: Kaithi number sign
    (0x110CD, 0x110CD), // Cf: Kaithi number sign above
    (0x13430, 0x1343F), // Cf: Egyptian hieroglyph format controls
    (0x1BCA0, 0x1BCA3), // Cf: shorthand format controls
    (0x1D173, 0x1D17A), // Cf: musical symbol format controls
    (0xE0000, 0xE0FFF), // Cf: tags, and variation selectors supplement (ignorable)
];

/// Whether `c` shows nothing or controls how text around it shows (see the module docs).
pub fn is_invisible(c: char) -> bool {
    let c = u32::from(c);
    INVISIBLE
        .iter()
        .any(|(low, high)| (*low..=*high).contains(&c))
}

/// Whether every character of `text` shows: no control, format, separator or other
/// invisible character (SPEC, Rooms).
pub fn is_visible(text: &str) -> bool {
    !text.chars().any(is_invisible)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_text_in_any_script_is_visible() {
        for text in [
            "Public Chat",
            "Café crème",
            "Ελληνικά",
            "日本語",
            "emoji 🎉👍🏽",
            "a\u{301}",
        ] {
            assert!(is_visible(text), "{text:?}");
        }
    }

    #[test]
    fn controls_formats_separators_and_fillers_are_not() {
        for c in [
            '\0',
            '\t',
            '\n',
            '\u{7f}',
            '\u{85}',
            '\u{ad}',
            '\u{34f}',
            '\u{61c}',
            '\u{115f}',
            '\u{180e}',
            '\u{200b}',
            '\u{200d}',
            '\u{200e}',
            '\u{2028}',
            '\u{2029}',
            '\u{202e}',
            '\u{2060}',
            '\u{2066}',
            '\u{3164}',
            '\u{fe0f}',
            '\u{feff}',
            '\u{ffa0}',
            '\u{1d173}',
            '\u{e0001}',
            '\u{e0041}',
            '\u{e0100}',
        ] {
            assert!(
                !is_visible(&format!("Public{c}Chat")),
                "U+{:04X}",
                u32::from(c)
            );
        }
    }

    /// The ranges are sorted and do not overlap, so a reader can check them against the
    /// Unicode tables in order.
    #[test]
    fn the_ranges_are_in_order() {
        for pair in INVISIBLE.windows(2) {
            assert!(pair[0].0 <= pair[0].1 && pair[0].1 < pair[1].0, "{pair:?}");
        }
    }
}
