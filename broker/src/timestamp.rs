//! Timestamps: epoch milliseconds inside, RFC 3339 at the edges.
//!
//! Requests carry either an RFC 3339 string (any offset, any sub-second
//! precision) or an integer of epoch milliseconds; responses always carry
//! `YYYY-MM-DDTHH:MM:SS.mmmZ`. Formatting is on the consume hot path, so it is
//! done by hand (checked against chrono in the tests) instead of through a
//! general-purpose formatter.

use std::time::{SystemTime, UNIX_EPOCH};

/// `0000-01-01T00:00:00.000Z`, the earliest timestamp that RFC 3339 can write.
pub const MIN_TIMESTAMP_MS: i64 = -62_167_219_200_000;
/// `9999-12-31T23:59:59.999Z`, the latest timestamp that RFC 3339 can write.
pub const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;

const MS_PER_DAY: i64 = 86_400_000;

/// The wall clock in epoch milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Parses either form a request may use: an integer of epoch milliseconds or
/// an RFC 3339 string. Sub-millisecond digits are truncated toward the past.
pub fn parse_timestamp(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let is_integer = !text.is_empty()
        && text
            .strip_prefix('-')
            .unwrap_or(text)
            .bytes()
            .all(|b| b.is_ascii_digit());
    let ms = if is_integer {
        text.parse::<i64>()
            .map_err(|_| format!("timestamp {text:?} is out of range"))?
    } else {
        chrono::DateTime::parse_from_rfc3339(text)
            .map_err(|e| {
                format!(
                    "timestamp {text:?} is neither epoch milliseconds nor RFC 3339 \
                     (e.g. \"2024-01-01T00:00:00Z\"): {e}"
                )
            })?
            .timestamp_millis()
    };
    check_range(ms)
}

/// Accepts epoch milliseconds that can be written back as RFC 3339.
pub fn check_range(ms: i64) -> Result<i64, String> {
    if (MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS).contains(&ms) {
        Ok(ms)
    } else {
        Err(format!(
            "timestamp {ms} ms is outside the years 0000..9999 that RFC 3339 can express"
        ))
    }
}

/// Appends `ms` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (24 bytes for years 0000..9999).
pub fn write_timestamp(ms: i64, out: &mut Vec<u8>) {
    let days = ms.div_euclid(MS_PER_DAY);
    let in_day = ms.rem_euclid(MS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute) = (in_day / 3_600_000, (in_day / 60_000) % 60);
    let (second, milli) = ((in_day / 1000) % 60, in_day % 1000);
    let year = year.clamp(0, 9999) as u32;
    let mut buf = *b"0000-00-00T00:00:00.000Z";
    put_digits(&mut buf[0..4], year);
    put_digits(&mut buf[5..7], month);
    put_digits(&mut buf[8..10], day);
    put_digits(&mut buf[11..13], hour as u32);
    put_digits(&mut buf[14..16], minute as u32);
    put_digits(&mut buf[17..19], second as u32);
    put_digits(&mut buf[20..23], milli as u32);
    out.extend_from_slice(&buf);
}

/// `ms` as an RFC 3339 string with millisecond precision.
pub fn format_timestamp(ms: i64) -> String {
    let mut out = Vec::with_capacity(24);
    write_timestamp(ms, &mut out);
    // write_timestamp only writes ASCII digits and separators.
    String::from_utf8(out).unwrap_or_default()
}

/// Formats timestamps, reusing the last result: consecutive records of a
/// batch usually share their timestamp.
#[derive(Debug, Default)]
pub struct TimestampWriter {
    last: Option<(i64, [u8; 24])>,
}

impl TimestampWriter {
    /// Appends `ms` like [`write_timestamp`].
    pub fn write(&mut self, ms: i64, out: &mut Vec<u8>) {
        match &self.last {
            Some((last, text)) if *last == ms => out.extend_from_slice(text),
            _ => {
                let start = out.len();
                write_timestamp(ms, out);
                let mut text = [0u8; 24];
                text.copy_from_slice(&out[start..start + 24]);
                self.last = Some((ms, text));
            }
        }
    }
}

fn put_digits(slot: &mut [u8], mut value: u32) {
    for byte in slot.iter_mut().rev() {
        *byte = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_timestamp(1_704_067_200_000),
            "2024-01-01T00:00:00.000Z"
        );
        assert_eq!(format_timestamp(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            format_timestamp(MIN_TIMESTAMP_MS),
            "0000-01-01T00:00:00.000Z"
        );
        assert_eq!(
            format_timestamp(MAX_TIMESTAMP_MS),
            "9999-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn parses_both_forms() {
        assert_eq!(parse_timestamp("1704067200000"), Ok(1_704_067_200_000));
        assert_eq!(
            parse_timestamp("2024-01-01T00:00:00Z"),
            Ok(1_704_067_200_000)
        );
        assert_eq!(
            parse_timestamp("2024-01-01T01:00:00.123456789+01:00"),
            Ok(1_704_067_200_123)
        );
        assert_eq!(parse_timestamp("-1"), Ok(-1));
        assert!(parse_timestamp("yesterday").is_err());
        assert!(parse_timestamp("").is_err());
        assert!(parse_timestamp("99999999999999999999").is_err());
        assert!(parse_timestamp("253402300800000").is_err());
    }

    proptest! {
        #[test]
        fn agrees_with_chrono(ms in MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS) {
            let ours = format_timestamp(ms);
            let theirs = chrono::DateTime::from_timestamp_millis(ms)
                .unwrap()
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string();
            prop_assert_eq!(&ours, &theirs);
            prop_assert_eq!(parse_timestamp(&ours), Ok(ms));
        }
    }
}
