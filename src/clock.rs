//! Wall-clock timestamps as RFC 3339 strings (`2026-11-28T15:19:28.123Z`).
//!
//! Room times and event times are set by the server in UTC with milliseconds. Formatting a
//! UTC time takes one small calendar conversion, so it is written here rather than pulling
//! in a date crate. The digits are written one by one rather than through `format!`: a
//! join stamps its member deep in its socket thread's stack, and `core::fmt`'s frames
//! there reached 8 bytes into a third page of every socket's stack (ws/mod.rs says what a
//! page of stack costs).

use std::time::{SystemTime, UNIX_EPOCH};

/// The current time as an RFC 3339 UTC string with milliseconds.
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// `time` as an RFC 3339 UTC string with milliseconds; times before 1970 clamp to the
/// epoch, and years run to 9999.
pub fn rfc3339(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (days, secs_of_day) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    let fields = [
        (year, 4, '-'),
        (month, 2, '-'),
        (day, 2, 'T'),
        (secs_of_day / 3600, 2, ':'),
        (secs_of_day / 60 % 60, 2, ':'),
        (secs_of_day % 60, 2, '.'),
        (u64::from(since_epoch.subsec_millis()), 3, 'Z'),
    ];
    let mut text = String::with_capacity(24);
    for (value, width, after) in fields {
        for place in (0..width).rev() {
            let digit = (value / 10u64.pow(place) % 10) as u8;
            text.push(char::from(b'0' + digit));
        }
        text.push(after);
    }
    text
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap_day = UNIX_EPOCH + Duration::from_millis(951_782_400_123);
        assert_eq!(rfc3339(leap_day), "2000-02-29T00:00:00.123Z");
        let later = UNIX_EPOCH + Duration::from_secs(1_795_879_168);
        assert_eq!(rfc3339(later), "2026-11-28T15:19:28.000Z");
        let last = UNIX_EPOCH + Duration::from_millis(253_402_300_799_999);
        assert_eq!(rfc3339(last), "9999-12-31T23:59:59.999Z");
    }

    /// The digits written one by one say what `format!` would, over the whole range.
    #[test]
    fn writes_what_format_would() {
        let mut millis: u64 = 0;
        while millis <= 253_402_300_799_999 {
            let time = UNIX_EPOCH + Duration::from_millis(millis);
            let (secs, ms) = (millis / 1000, millis % 1000);
            let (days, of_day) = (secs / 86_400, secs % 86_400);
            let (year, month, day) = civil_from_days(days);
            let expected = format!(
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
                of_day / 3600,
                of_day / 60 % 60,
                of_day % 60
            );
            assert_eq!(rfc3339(time), expected);
            millis = millis * 11 / 10 + 7_777_777;
        }
    }
}
