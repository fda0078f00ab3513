//! The door: decides, when an event arrives, whether the bytes a producer
//! sent can become exactly one well-formed row of its table, and why not
//! when they cannot. `push`, the library `Producer`, the stream workers,
//! `dead-letter redrive` and the uploader all ask here, so whatever enters
//! an upload queue can always become a row.
//!
//! An accepted event is stored as the producer's JSON with insignificant
//! whitespace removed (`json_text`): tokens, numbers and key order stay as
//! written, so a record is one line and an indented copy of an event equals
//! the compact one. The only other change ever made is giving an event its
//! missing timestamp. Types follow `schemas/` (`schema`); times follow
//! BigQuery's TIMESTAMP literal (`time`).

pub(crate) mod check;
pub(crate) mod json_text;
pub(crate) mod schema;
pub(crate) mod time;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};

pub(crate) use check::{check, check_id_text};
pub(crate) use schema::{EventSchema, FieldType};
pub use time::TimeWindow;

use crate::keys::EventKind;

/// Longest id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// Why an event was refused. The `code` goes into the dead-letter entry and
/// metrics; the message says what is wrong in words and names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("stream entry has no `data` field")]
    MissingData,
    #[error("event is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("not valid JSON: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    DuplicateKey(String),
    #[error("JSON value is not an object")]
    NotAnObject,
    #[error(
        "JSON is nested deeper than {} objects and arrays",
        json_text::MAX_DEPTH
    )]
    TooDeep,
    #[error("`{0}` is missing")]
    MissingId(&'static str),
    #[error("`{0}` is not a string")]
    IdNotString(&'static str),
    #[error("`{0}` is empty")]
    EmptyId(&'static str),
    #[error("`{field}` is {len} bytes, over the limit of {MAX_ID_BYTES}")]
    IdTooLong { field: &'static str, len: usize },
    #[error("`{0}` contains whitespace or control characters")]
    IdBadCharacter(&'static str),
    #[error("`{0}` is missing; the table requires it")]
    MissingField(String),
    #[error("`{field}` is {found}, the column is {expected}")]
    InvalidType {
        field: String,
        expected: &'static str,
        found: String,
    },
    #[error(
        "`{field}` is not a time BigQuery reads ({value}): expected a date and time such as 2026-11-20T14:30:00.123456, with T or a space, up to 6 fractional digits, and an offset, Z or none (UTC)"
    )]
    InvalidTimestamp { field: String, value: String },
    #[error("`{field}` is {value}, outside the accepted window ({window})")]
    TimestampOutOfRange {
        field: String,
        value: String,
        window: String,
    },
}

impl Rejection {
    /// Every reason code the door gives, for documentation and metrics.
    pub const CODES: [&'static str; 15] = [
        "missing_data",
        "too_large",
        "invalid_json",
        "duplicate_key",
        "too_deep",
        "not_an_object",
        "missing_id",
        "id_not_string",
        "empty_id",
        "id_too_long",
        "id_bad_character",
        "missing_field",
        "invalid_type",
        "invalid_timestamp",
        "timestamp_out_of_range",
    ];

    /// Stable machine-readable reason, used as dead-letter field and metric label.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::MissingData => "missing_data",
            Rejection::TooLarge { .. } => "too_large",
            Rejection::InvalidJson(_) => "invalid_json",
            Rejection::DuplicateKey(_) => "duplicate_key",
            Rejection::TooDeep => "too_deep",
            Rejection::NotAnObject => "not_an_object",
            Rejection::MissingId(_) => "missing_id",
            Rejection::IdNotString(_) => "id_not_string",
            Rejection::EmptyId(_) => "empty_id",
            Rejection::IdTooLong { .. } => "id_too_long",
            Rejection::IdBadCharacter(_) => "id_bad_character",
            Rejection::MissingField(_) => "missing_field",
            Rejection::InvalidType { .. } => "invalid_type",
            Rejection::InvalidTimestamp { .. } => "invalid_timestamp",
            Rejection::TimestampOutOfRange { .. } => "timestamp_out_of_range",
        }
    }

    /// The field the reason is about, when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            Rejection::MissingId(f)
            | Rejection::IdNotString(f)
            | Rejection::EmptyId(f)
            | Rejection::IdBadCharacter(f)
            | Rejection::IdTooLong { field: f, .. } => Some(f),
            Rejection::MissingField(f)
            | Rejection::InvalidType { field: f, .. }
            | Rejection::InvalidTimestamp { field: f, .. }
            | Rejection::TimestampOutOfRange { field: f, .. } => Some(f),
            _ => None,
        }
    }
}

/// The door's limits, from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DoorRules {
    pub max_event_bytes: usize,
    /// Event times accepted, around the clock the door reads.
    pub window: TimeWindow,
    /// How far a stream entry's id may be ahead of the Redis server's clock
    /// and still be taken as the arrival time.
    pub arrival_skew: TimeDelta,
}

impl Default for DoorRules {
    fn default() -> Self {
        DoorRules {
            max_event_bytes: 1024 * 1024,
            window: TimeWindow::default(),
            arrival_skew: TimeDelta::seconds(60),
        }
    }
}

/// Where the stamp of an event without its own time went into the record:
/// the record is `original[..at]`, the stamp, `original[at + replaced..]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub at: usize,
    /// Bytes of the original replaced by the stamp (a `null`), else 0.
    pub replaced: usize,
}

/// An event that passed the door, ready to be stored as a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedEvent {
    pub id: String,
    /// The record: the producer's JSON on one line, its timestamp guaranteed.
    pub payload: String,
    /// The producer's JSON on one line, before any stamp.
    pub original: String,
    /// Set when the timestamp is the arrival time, which differs between
    /// copies of the same event: duplicates are then recognised by
    /// `original` around the stamp.
    pub stamped_at_arrival: Option<Stamp>,
    /// The event time (the partition column), in UTC.
    pub event_time: DateTime<Utc>,
}

/// Checks one event of `kind`. `arrival` is stamped into events that carry
/// no time of their own; `now` is the clock the window is read against (the
/// Redis server's at the workers, the local one in producers).
///
/// ```
/// use flit_cache::event::{DoorRules, accept};
/// use flit_cache::keys::EventKind;
///
/// let now = chrono::Utc::now();
/// // As Python's json.dumps sends it: a string amount, a time without offset (UTC).
/// let event = br#"{"transaction_id": "tx-1", "amount": "120.50", "transaction_timestamp": "2026-12-03T10:00:00"}"#;
/// let accepted = accept(EventKind::Transaction, event, now, now, &DoorRules::default())
///     .expect("a valid transaction");
/// assert_eq!(accepted.id, "tx-1");
///
/// let refused = accept(EventKind::Transaction, br#"{"amount": 1}"#, now, now, &DoorRules::default())
///     .expect_err("no id");
/// println!("refused: {} ({refused})", refused.code());
/// ```
pub fn accept(
    kind: EventKind,
    data: &[u8],
    arrival: DateTime<Utc>,
    now: DateTime<Utc>,
    rules: &DoorRules,
) -> Result<AcceptedEvent, Rejection> {
    if data.len() > rules.max_event_bytes {
        return Err(Rejection::TooLarge {
            size: data.len(),
            limit: rules.max_event_bytes,
        });
    }
    let original = String::from_utf8(json_text::minify(data))
        .map_err(|e| Rejection::InvalidJson(format!("not UTF-8 ({e})")))?;
    let checked = check(kind, &original, Some(rules.window.bounds(now)))?;
    let id = checked.id.into_owned();
    let (payload, stamped_at_arrival, event_time) = match checked.time {
        check::EventTime::Present(at) => (original.clone(), None, at),
        check::EventTime::Missing { slot, fallback } => {
            let (text, at, from_arrival) = match fallback {
                Some((text, at)) => (text.to_owned(), at, false),
                None => (
                    serde_json::Value::from(arrival.to_rfc3339_opts(SecondsFormat::Millis, true))
                        .to_string(),
                    arrival,
                    true,
                ),
            };
            let (record, stamp) = stamp_time(&original, kind.timestamp_field(), &text, slot);
            (record, from_arrival.then_some(stamp), at)
        }
    };
    // The limit holds for what is stored and sent on, stamp included: the
    // Producer sends the stamped record, and the workers check it again.
    if payload.len() > rules.max_event_bytes {
        return Err(Rejection::TooLarge {
            size: payload.len(),
            limit: rules.max_event_bytes,
        });
    }
    Ok(AcceptedEvent {
        id,
        payload,
        original,
        stamped_at_arrival,
        event_time,
    })
}

/// Puts `value` (JSON text) as the event's time: in place of its `null`, or
/// as a new first field.
fn stamp_time(original: &str, field: &str, value: &str, slot: check::Slot) -> (String, Stamp) {
    let mut record = String::with_capacity(original.len() + field.len() + value.len() + 4);
    let stamp = match slot {
        check::Slot::Null { at } => {
            record.push_str(&original[..at]);
            record.push_str(value);
            record.push_str(&original[at + 4..]);
            Stamp { at, replaced: 4 }
        }
        check::Slot::Absent => {
            // Minified, so the object starts with its brace and holds the id.
            record.push('{');
            record.push_str(&serde_json::Value::from(field).to_string());
            record.push(':');
            record.push_str(value);
            record.push(',');
            record.push_str(&original[1..]);
            Stamp { at: 1, replaced: 0 }
        }
    };
    (record, stamp)
}

/// The time a stream entry reached Redis, from its id (`<ms>-<seq>`).
pub(crate) fn entry_time(entry_id: &str) -> Option<DateTime<Utc>> {
    let millis = entry_id.split_once('-')?.0.parse::<i64>().ok()?;
    DateTime::from_timestamp_millis(millis)
}

/// The arrival stamp of a stream entry: its id's time, which a redelivered
/// entry shares, unless that time is implausible (a producer chose the id:
/// more than the skew ahead of the server's clock, or before the window);
/// then the server's clock `server_now`.
pub(crate) fn arrival_time(
    entry_id: &str,
    server_now: DateTime<Utc>,
    rules: &DoorRules,
) -> DateTime<Utc> {
    let (earliest, _) = rules.window.bounds(server_now);
    let latest = server_now
        .checked_add_signed(rules.arrival_skew)
        .unwrap_or(server_now);
    match entry_time(entry_id) {
        Some(at) if at >= earliest && at <= latest => at,
        _ => server_now,
    }
}

#[cfg(test)]
mod tests;
