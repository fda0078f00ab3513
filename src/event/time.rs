//! Event times as BigQuery reads a TIMESTAMP literal: a date and a time
//! joined by `T` or a space, up to six fractional digits, and an offset,
//! `Z`, or none (then UTC). Everything else is refused, so a time that the
//! door lets in always becomes a TIMESTAMP the warehouse stores.

use chrono::{DateTime, NaiveDate, NaiveTime, SecondsFormat, TimeDelta, Utc};

/// BigQuery's TIMESTAMP range: 0001-01-01 00:00:00 to 9999-12-31
/// 23:59:59.999999 UTC. A time whose UTC form falls outside (year 0, or
/// 9999-12-31T23:00-02:00) cannot be stored at all.
pub fn bigquery_range() -> (DateTime<Utc>, DateTime<Utc>) {
    let first = NaiveDate::from_ymd_opt(1, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let last = NaiveDate::from_ymd_opt(9999, 12, 31)
        .and_then(|d| d.and_hms_micro_opt(23, 59, 59, 999_999))
        .map(|t| t.and_utc())
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    (first, last)
}

/// Reads `text` as BigQuery reads a TIMESTAMP literal; `None` if it is not one.
/// The result may still lie outside [`bigquery_range`].
pub fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    let mut cursor = Cursor(text.as_bytes());
    let year = cursor.digits(4, 4)?;
    cursor.expect(b'-')?;
    let month = cursor.digits(1, 2)?;
    cursor.expect(b'-')?;
    let day = cursor.digits(1, 2)?;
    match cursor.next()? {
        b'T' | b't' | b' ' => {}
        _ => return None,
    }
    let hour = cursor.digits(1, 2)?;
    cursor.expect(b':')?;
    let minute = cursor.digits(1, 2)?;
    cursor.expect(b':')?;
    let second = cursor.digits(1, 2)?;
    let mut micros = 0;
    if cursor.peek() == Some(b'.') {
        cursor.next();
        let start = cursor.0.len();
        let fraction = cursor.digits(1, 6)?;
        let written = start - cursor.0.len();
        micros = fraction * 10u32.pow(6 - written as u32);
    }
    let offset_seconds: i64 = match cursor.next() {
        None => 0,
        Some(b'Z' | b'z') => 0,
        Some(sign @ (b'+' | b'-')) => {
            let hours = cursor.digits(1, 2)?;
            let minutes = match cursor.peek() {
                Some(b':') => {
                    cursor.next();
                    cursor.digits(2, 2)?
                }
                _ => 0,
            };
            if hours > 14 || minutes > 59 {
                return None;
            }
            let seconds = i64::from(hours * 3_600 + minutes * 60);
            if sign == b'-' { -seconds } else { seconds }
        }
        Some(_) => return None,
    };
    if !cursor.0.is_empty() {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(year as i32, month, day)?;
    // A second of 60 (a leap second) is not a time BigQuery stores.
    let time = NaiveTime::from_hms_micro_opt(hour, minute, second, micros)?;
    let local = date.and_time(time).and_utc();
    local.checked_sub_signed(TimeDelta::seconds(offset_seconds))
}

/// BigQuery's canonical TIMESTAMP text: RFC 3339 in UTC, microseconds.
pub fn canonical(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The times an event may carry: from `earliest` to `max_ahead` past the
/// clock the door reads (the Redis server's, at the workers). Always within
/// BigQuery's own range, whatever the configuration says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    pub earliest: DateTime<Utc>,
    pub max_ahead: TimeDelta,
}

impl Default for TimeWindow {
    fn default() -> Self {
        TimeWindow {
            // BigQuery's first day partition.
            earliest: NaiveDate::from_ymd_opt(1960, 1, 1)
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc())
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
            max_ahead: TimeDelta::hours(24),
        }
    }
}

impl TimeWindow {
    /// The first and last acceptable time when the clock reads `now`.
    pub fn bounds(&self, now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
        let (first, last) = bigquery_range();
        let latest = now.checked_add_signed(self.max_ahead).unwrap_or(last);
        (self.earliest.max(first), latest.min(last))
    }
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.0.first().copied()
    }

    fn next(&mut self) -> Option<u8> {
        let (first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*first)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    /// Between `min` and `max` ASCII digits, as a number.
    fn digits(&mut self, min: usize, max: usize) -> Option<u32> {
        let count = self
            .0
            .iter()
            .take(max)
            .take_while(|b| b.is_ascii_digit())
            .count();
        if count < min {
            return None;
        }
        let (digits, rest) = self.0.split_at(count);
        self.0 = rest;
        Some(
            digits
                .iter()
                .fold(0u32, |n, d| n * 10 + u32::from(d - b'0')),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    #[test]
    fn reads_what_python_and_javascript_write() {
        let cases = [
            // datetime.utcnow().isoformat(): no offset, so UTC
            ("2026-11-20T14:30:00.123456", "2026-11-20T14:30:00.123456Z"),
            ("2026-11-20T14:30:00", "2026-11-20T14:30:00Z"),
            // str(datetime): a space
            ("2026-11-20 14:30:00", "2026-11-20T14:30:00Z"),
            // datetime.now(timezone.utc).isoformat()
            ("2026-11-20T14:30:00+00:00", "2026-11-20T14:30:00Z"),
            // new Date().toISOString()
            ("2026-11-20T14:30:00.123Z", "2026-11-20T14:30:00.123Z"),
            ("2026-11-20T23:30:00-02:00", "2026-11-21T01:30:00Z"),
            ("2026-11-20T14:30:00+05", "2026-11-20T09:30:00Z"),
            ("2026-1-2T3:4:5z", "2026-01-02T03:04:05Z"),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_timestamp(text), Some(utc(expected)), "{text}");
        }
    }

    #[test]
    fn refuses_what_bigquery_would_not_read() {
        for text in [
            "",
            "yesterday",
            "2026-11-20",
            "2026-11-20T14:30",
            "2026-11-20T14:30:00.1234567",
            "2026-11-20T14:30:00.",
            "2026-02-30T00:00:00Z",
            "2026-11-20T24:00:00Z",
            "2026-11-20T23:59:60Z",
            "2026-11-20T14:30:00+15:00",
            "2026-11-20T14:30:00 +01:00",
            "2026-11-20T14:30:00Z ",
            " 2026-11-20T14:30:00Z",
            "26-11-20T14:30:00Z",
            "20261120T143000Z",
            "2026-11-20T14:30:00UTC",
            "1700000000",
        ] {
            assert_eq!(parse_timestamp(text), None, "{text:?}");
        }
    }

    #[test]
    fn years_beyond_bigquery_parse_but_fall_outside_its_range() {
        let (first, last) = bigquery_range();
        let zero = parse_timestamp("0000-06-01T00:00:00Z").expect("parses");
        assert!(zero < first);
        let past_end = parse_timestamp("9999-12-31T23:00:00-02:00").expect("parses");
        assert!(past_end > last, "renders as year 10000");
        let end = parse_timestamp("9999-12-31T23:59:59.999999Z").expect("parses");
        assert_eq!(end, last);
    }

    #[test]
    fn the_window_follows_the_clock_and_never_leaves_bigquery_range() {
        let window = TimeWindow::default();
        let now = utc("2026-11-23T12:00:00Z");
        let (earliest, latest) = window.bounds(now);
        assert_eq!(earliest, utc("1960-01-01T00:00:00Z"));
        assert_eq!(latest, utc("2026-11-24T12:00:00Z"));
        let wide = TimeWindow {
            earliest: DateTime::<Utc>::MIN_UTC,
            max_ahead: TimeDelta::days(365 * 20_000),
        };
        assert_eq!(wide.bounds(now), bigquery_range());
    }

    #[test]
    fn canonical_text_is_utc_with_microseconds() {
        let at = parse_timestamp("2026-11-20 14:30:00.5-01:00").expect("parses");
        assert_eq!(canonical(at), "2026-11-20T15:30:00.500000Z");
    }
}
