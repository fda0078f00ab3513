//! Validation of incoming events: decides whether the bytes a producer sent
//! can become a cached record, and why not when they cannot.
//!
//! Accepted payloads are kept byte for byte as the producer wrote them; the
//! only change ever made is inserting a missing timestamp field at the front
//! of the object, so no number or field is reformatted on the way to the
//! warehouse.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

use crate::keys::EventKind;

/// Longest id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// The event fields that carry an event time, checked when present.
const TRANSACTION_TIME_FIELD: &str = "transaction_timestamp";

/// Why an event was refused. The `code` goes into the dead-letter entry and
/// metrics; the message says what is wrong in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("stream entry has no `data` field")]
    MissingData,
    #[error("event is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("not valid JSON: {0}")]
    InvalidJson(String),
    #[error("JSON value is not an object")]
    NotAnObject,
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
    #[error("`{field}` is not an RFC 3339 time: {value}")]
    InvalidTimestamp { field: &'static str, value: String },
}

impl Rejection {
    /// Stable machine-readable reason, used as dead-letter field and metric label.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::MissingData => "missing_data",
            Rejection::TooLarge { .. } => "too_large",
            Rejection::InvalidJson(_) => "invalid_json",
            Rejection::NotAnObject => "not_an_object",
            Rejection::MissingId(_) => "missing_id",
            Rejection::IdNotString(_) => "id_not_string",
            Rejection::EmptyId(_) => "empty_id",
            Rejection::IdTooLong { .. } => "id_too_long",
            Rejection::IdBadCharacter(_) => "id_bad_character",
            Rejection::InvalidTimestamp { .. } => "invalid_timestamp",
        }
    }
}

/// An event that passed validation, ready to be stored as a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedEvent {
    pub id: String,
    /// The JSON object to store, with its timestamp field guaranteed.
    pub payload: String,
    /// True when the timestamp is the arrival time, which differs between
    /// copies of the same event; `payload` is then `original` with one field
    /// inserted first, and duplicates are recognised by `original`.
    pub stamped_at_arrival: bool,
    /// The event as the producer sent it (trimmed).
    pub original: String,
}

/// Checks one event of `kind`. `arrival` is the time stamped into events that
/// carry no event time of their own.
pub fn accept(
    kind: EventKind,
    data: &[u8],
    arrival: DateTime<Utc>,
    max_event_bytes: usize,
) -> Result<AcceptedEvent, Rejection> {
    if data.len() > max_event_bytes {
        return Err(Rejection::TooLarge {
            size: data.len(),
            limit: max_event_bytes,
        });
    }
    let value: Value =
        serde_json::from_slice(data).map_err(|e| Rejection::InvalidJson(e.to_string()))?;
    let Value::Object(object) = value else {
        return Err(Rejection::NotAnObject);
    };
    let id = check_id(&object, kind.id_field())?.to_owned();

    let time_field = kind.timestamp_field();
    let stamped = match object.get(time_field) {
        Some(value) => {
            check_time(time_field, value)?;
            None
        }
        None => Some(default_time(kind, &object, arrival)?),
    };
    let stamped_at_arrival = stamped
        .as_ref()
        .is_some_and(|(_, from_arrival)| *from_arrival);
    if kind == EventKind::Transaction
        && let Some(value) = object.get(TRANSACTION_TIME_FIELD)
    {
        check_time(TRANSACTION_TIME_FIELD, value)?;
    }

    // serde_json accepted the bytes, so they are UTF-8.
    let original = String::from_utf8_lossy(data).trim().to_owned();
    let payload = match stamped {
        None => original.clone(),
        Some((time, _)) => insert_first_field(&original, time_field, &time),
    };
    Ok(AcceptedEvent {
        id,
        payload,
        stamped_at_arrival,
        original,
    })
}

fn check_id<'a>(object: &'a Map<String, Value>, field: &'static str) -> Result<&'a str, Rejection> {
    let id = match object.get(field) {
        None | Some(Value::Null) => return Err(Rejection::MissingId(field)),
        Some(Value::String(id)) => id.as_str(),
        Some(_) => return Err(Rejection::IdNotString(field)),
    };
    check_id_text(field, id)?;
    Ok(id)
}

/// The rules every record id follows: not empty, at most `MAX_ID_BYTES`,
/// no whitespace or control characters (ids become Redis keys).
pub fn check_id_text(field: &'static str, id: &str) -> Result<(), Rejection> {
    if id.is_empty() {
        return Err(Rejection::EmptyId(field));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(Rejection::IdTooLong {
            field,
            len: id.len(),
        });
    }
    if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Rejection::IdBadCharacter(field));
    }
    Ok(())
}

fn check_time(field: &'static str, value: &Value) -> Result<(), Rejection> {
    match value {
        Value::String(text) if DateTime::parse_from_rfc3339(text).is_ok() => Ok(()),
        other => Err(Rejection::InvalidTimestamp {
            field,
            value: truncate(&other.to_string(), 64),
        }),
    }
}

/// A transaction without `_timestamp` takes its own `transaction_timestamp`,
/// so it lands in the partition of the day it happened; anything else takes
/// the arrival time (and says so with `true`).
fn default_time(
    kind: EventKind,
    object: &Map<String, Value>,
    arrival: DateTime<Utc>,
) -> Result<(String, bool), Rejection> {
    if kind == EventKind::Transaction
        && let Some(value) = object.get(TRANSACTION_TIME_FIELD)
    {
        check_time(TRANSACTION_TIME_FIELD, value)?;
        if let Value::String(text) = value {
            return Ok((text.clone(), false));
        }
    }
    Ok((arrival.to_rfc3339_opts(SecondsFormat::Millis, true), true))
}

/// Inserts `"field":"value",` right after the object's opening brace. The
/// object is known to hold at least the id, so a comma always follows.
fn insert_first_field(object_text: &str, field: &str, value: &str) -> String {
    let rest = object_text.strip_prefix('{').unwrap_or(object_text);
    let mut out = String::with_capacity(object_text.len() + field.len() + value.len() + 8);
    out.push('{');
    // Field names and times need no escaping, but serialising keeps that true.
    out.push_str(&Value::from(field).to_string());
    out.push(':');
    out.push_str(&Value::from(value).to_string());
    out.push(',');
    out.push_str(rest.trim_end());
    out
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The time a stream entry reached Redis, from its id (`<ms>-<seq>`).
pub fn entry_time(entry_id: &str) -> Option<DateTime<Utc>> {
    let millis = entry_id.split_once('-')?.0.parse::<i64>().ok()?;
    DateTime::from_timestamp_millis(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 1024 * 1024;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-02T03:04:05.678Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    fn tx(text: &str) -> Result<AcceptedEvent, Rejection> {
        accept(EventKind::Transaction, text.as_bytes(), now(), LIMIT)
    }

    fn pred(text: &str) -> Result<AcceptedEvent, Rejection> {
        accept(EventKind::Prediction, text.as_bytes(), now(), LIMIT)
    }

    #[test]
    fn keeps_a_complete_event_byte_for_byte() {
        let text =
            r#"{"_timestamp":"2025-09-27T14:30:00Z","transaction_id":"tx_1","amount":299.990}"#;
        let event = tx(text).expect("valid");
        assert_eq!(event.id, "tx_1");
        assert_eq!(event.payload, text);
        assert!(!event.stamped_at_arrival);
    }

    #[test]
    fn transaction_without_timestamp_takes_its_transaction_time() {
        let event =
            tx(r#"{"transaction_id":"tx_1","transaction_timestamp":"2025-09-27T14:30:00Z"}"#)
                .expect("valid");
        assert_eq!(
            event.payload,
            r#"{"_timestamp":"2025-09-27T14:30:00Z","transaction_id":"tx_1","transaction_timestamp":"2025-09-27T14:30:00Z"}"#
        );
    }

    #[test]
    fn prediction_without_timestamp_takes_arrival_time() {
        let event = pred(r#" {"prediction_id":"p1","selected_prediction":0.25} "#).expect("valid");
        assert_eq!(
            event.payload,
            r#"{"prediction_timestamp":"2026-01-02T03:04:05.678Z","prediction_id":"p1","selected_prediction":0.25}"#
        );
        assert!(event.stamped_at_arrival);
        assert_eq!(
            event.original,
            r#"{"prediction_id":"p1","selected_prediction":0.25}"#
        );
        let parsed: Value = serde_json::from_str(&event.payload).expect("still JSON");
        assert_eq!(parsed["selected_prediction"], 0.25);
    }

    #[test]
    fn rejects_each_kind_of_bad_input_with_its_reason() {
        let long_id = "x".repeat(MAX_ID_BYTES + 1);
        let cases: Vec<(String, &str)> = vec![
            ("not json".into(), "invalid_json"),
            ("[1,2]".into(), "not_an_object"),
            ("\"text\"".into(), "not_an_object"),
            (r#"{"amount":1}"#.into(), "missing_id"),
            (r#"{"transaction_id":null}"#.into(), "missing_id"),
            (r#"{"transaction_id":42}"#.into(), "id_not_string"),
            (r#"{"transaction_id":""}"#.into(), "empty_id"),
            (
                format!(r#"{{"transaction_id":"{long_id}"}}"#),
                "id_too_long",
            ),
            (r#"{"transaction_id":"tx 1"}"#.into(), "id_bad_character"),
            (
                r#"{"transaction_id":"tx\u00011"}"#.into(),
                "id_bad_character",
            ),
            (
                r#"{"transaction_id":"t","_timestamp":"yesterday"}"#.into(),
                "invalid_timestamp",
            ),
            (
                r#"{"transaction_id":"t","_timestamp":1700000000}"#.into(),
                "invalid_timestamp",
            ),
            (
                r#"{"transaction_id":"t","transaction_timestamp":"2025-13-01T00:00:00Z"}"#.into(),
                "invalid_timestamp",
            ),
        ];
        for (text, code) in cases {
            let rejection = tx(&text).expect_err(&text);
            assert_eq!(rejection.code(), code, "{text}: {rejection}");
        }
        let rejection =
            pred(r#"{"prediction_id":"p","prediction_timestamp":"2025-02-30T00:00:00Z"}"#)
                .expect_err("bad date");
        assert_eq!(rejection.code(), "invalid_timestamp");
    }

    #[test]
    fn id_of_exactly_the_limit_is_accepted() {
        let id = "é".repeat(MAX_ID_BYTES / 2);
        assert_eq!(id.len(), MAX_ID_BYTES);
        let event = tx(&format!(r#"{{"transaction_id":"{id}"}}"#)).expect("at the limit");
        assert_eq!(event.id, id);
    }

    #[test]
    fn size_limit_is_checked_before_parsing() {
        let rejection =
            accept(EventKind::Prediction, &[b' '; 2048], now(), 1024).expect_err("too big");
        assert_eq!(
            rejection,
            Rejection::TooLarge {
                size: 2048,
                limit: 1024
            }
        );
    }

    #[test]
    fn entry_time_reads_the_stream_id() {
        let time = entry_time("1700000000123-7").expect("valid id");
        assert_eq!(time.timestamp_millis(), 1_700_000_000_123);
        assert!(entry_time("garbage").is_none());
    }
}
