//! One line per action on stderr, each stamped with UTC wall-clock time to the millisecond, so
//! a test's log can be lined up with moto's and dockerd's. Also the timestamp arithmetic the
//! agent needs (Docker reports times as RFC 3339 text; no date crate is pulled in for that).

use std::time::{SystemTime, UNIX_EPOCH};

/// Writes one action line to stderr: `2025-01-02T03:04:05.678Z <text>`.
macro_rules! say {
    ($($arg:tt)*) => { $crate::action_log::line(format_args!($($arg)*)) };
}
pub(crate) use say;

pub fn line(text: std::fmt::Arguments<'_>) {
    eprintln!("{} {text}", utc_now());
}

/// The current time as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn utc_now() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    format_utc(now.as_secs() as i64, now.subsec_millis())
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

fn format_utc(secs: i64, millis: u32) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Seconds since the epoch of an RFC 3339 time as Docker writes it
/// (`2024-05-01T10:11:12.123456789Z`, or with a `+hh:mm` offset for volumes).
/// `None` for text that is not such a time, and for Docker's "never" (`0001-01-01T00:00:00Z`).
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if y < 1970 || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let mut rest = &text[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) && &rest[3..4] == ":" => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (rest[1..3].parse::<i64>().ok()? * 3600 + rest[4..6].parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    Some(days_from_civil(y, mo as u32, d as u32) * 86_400 + h * 3600 + mi * 60 + s - offset)
}

// Howard Hinnant's civil-calendar algorithms (proleptic Gregorian, days since 1970-01-01).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_times_parse_to_unix_seconds() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2024-02-29T12:34:56.123456789Z"), Some(1_709_210_096));
        assert_eq!(parse_rfc3339("2024-02-29T13:34:56+01:00"), Some(1_709_210_096));
        assert_eq!(parse_rfc3339("0001-01-01T00:00:00Z"), None, "Docker's 'never'");
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn utc_formatting_round_trips() {
        assert_eq!(format_utc(1_709_210_096, 7), "2024-02-29T12:34:56.007Z");
        assert_eq!(format_utc(0, 0), "1970-01-01T00:00:00.000Z");
        for secs in [0, 951_782_400, 1_709_210_096, 4_102_444_800] {
            let text = format_utc(secs, 0);
            assert_eq!(parse_rfc3339(&text), Some(secs), "{text}");
        }
    }
}
