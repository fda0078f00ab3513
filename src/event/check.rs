//! The field checks of the door: the id, each field named in the kind's
//! schema, and the event time. Values come out as the JSON text their
//! column takes (a number given as a string becomes that number; a time
//! becomes BigQuery's canonical UTC text); `raw` and `json_body` keep the
//! producer's own text.

use std::borrow::Cow;

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::value::RawValue;

use super::json_text::{self, JsonProblem, shorten};
use super::schema::{EventField, EventSchema, FieldType};
use super::time::{bigquery_range, canonical, parse_timestamp};
use super::{MAX_ID_BYTES, Rejection};
use crate::keys::EventKind;

/// Where an event without its own time keeps the slot for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The field is not there: the stamp goes in front.
    Absent,
    /// The field holds `null` at this byte offset: the stamp replaces it.
    Null { at: usize },
}

/// The event time, or what to stamp in its place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventTime<'a> {
    Present(DateTime<Utc>),
    /// Missing; `fallback` is another field's time (a transaction's own
    /// `transaction_timestamp`) as written and as read.
    Missing {
        slot: Slot,
        fallback: Option<(&'a str, DateTime<Utc>)>,
    },
}

/// An event that follows the rules.
#[derive(Debug, Clone)]
pub struct Checked<'a> {
    pub id: Cow<'a, str>,
    /// The column text of each field of the kind's schema, in schema order;
    /// `None` when the event does not carry it (or carries `null`).
    pub values: Vec<Option<Cow<'a, str>>>,
    pub time: EventTime<'a>,
}

/// A transaction without `_timestamp` takes this field's time, so it lands
/// in the partition of the day it happened.
fn fallback_time_field(kind: EventKind) -> Option<&'static str> {
    match kind {
        EventKind::Transaction => Some("transaction_timestamp"),
        EventKind::Prediction => None,
    }
}

/// Checks `text` (one line, as `json_text::minify` makes it) against the
/// rules of `kind`. Times must lie within `bounds` (default: BigQuery's range).
pub fn check(
    kind: EventKind,
    text: &str,
    bounds: Option<(DateTime<Utc>, DateTime<Utc>)>,
) -> Result<Checked<'_>, Rejection> {
    let fields = json_text::object_fields(text).map_err(|problem| match problem {
        JsonProblem::Invalid(message) => Rejection::InvalidJson(message),
        JsonProblem::NotAnObject => Rejection::NotAnObject,
        JsonProblem::DuplicateKey(message) => Rejection::DuplicateKey(message),
        JsonProblem::TooDeep => Rejection::TooDeep,
    })?;
    let find = |name: &str| {
        fields
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| *value)
    };
    let bounds = bounds.unwrap_or_else(bigquery_range);
    let schema = EventSchema::for_kind(kind);

    let id_field = kind.id_field();
    let id = match find(id_field).map(RawValue::get) {
        None | Some("null") => return Err(Rejection::MissingId(id_field)),
        Some(raw) if !raw.starts_with('"') => return Err(Rejection::IdNotString(id_field)),
        Some(raw) => decode_string(raw)?,
    };
    check_id_text(id_field, &id)?;

    let time_field = kind.timestamp_field();
    let mut values = Vec::with_capacity(schema.fields.len());
    let mut time = None;
    let mut times = Vec::new();
    for field in &schema.fields {
        let raw = find(&field.name).map(RawValue::get);
        let value = match raw {
            None | Some("null") => {
                if field.required && field.name != time_field && field.name != id_field {
                    return Err(Rejection::MissingField(field.name.clone()));
                }
                None
            }
            Some(raw) if field.name == id_field => Some(Cow::Borrowed(raw)),
            Some(raw) => {
                let (column, at) = column_value(field, raw, bounds)?;
                if let Some(at) = at {
                    times.push((field.name.as_str(), raw, at));
                }
                Some(column)
            }
        };
        if field.name == time_field {
            time = Some(match raw {
                Some(raw) if raw != "null" => times
                    .last()
                    .map(|(_, _, at)| EventTime::Present(*at))
                    .ok_or_else(|| invalid_timestamp(field, raw))?,
                other => EventTime::Missing {
                    slot: match other.and_then(|raw| json_text::offset_in(text, raw)) {
                        Some(at) => Slot::Null { at },
                        None => Slot::Absent,
                    },
                    fallback: None,
                },
            });
        }
        values.push(value);
    }
    let time = match time {
        Some(EventTime::Missing { slot, .. }) => EventTime::Missing {
            slot,
            fallback: fallback_time_field(kind).and_then(|name| {
                times
                    .iter()
                    .find(|(field, _, _)| *field == name)
                    .map(|(_, raw, at)| (*raw, *at))
            }),
        },
        Some(present) => present,
        None => EventTime::Missing {
            slot: Slot::Absent,
            fallback: None,
        },
    };
    Ok(Checked { id, values, time })
}

/// The text a column of `field`'s type takes from `raw`, and the time it
/// holds when it is a TIMESTAMP.
fn column_value<'a>(
    field: &EventField,
    raw: &'a str,
    bounds: (DateTime<Utc>, DateTime<Utc>),
) -> Result<(Cow<'a, str>, Option<DateTime<Utc>>), Rejection> {
    let is_string = raw.starts_with('"');
    let wrong = |field: &EventField| Rejection::InvalidType {
        field: field.name.clone(),
        expected: expected(field.field_type),
        found: describe(raw),
    };
    Ok(match field.field_type {
        FieldType::Json => (Cow::Borrowed(raw), None),
        FieldType::String if is_string => (Cow::Borrowed(raw), None),
        FieldType::Bool if raw == "true" || raw == "false" => (Cow::Borrowed(raw), None),
        FieldType::Float64 | FieldType::Int64 => {
            let number: Cow<'a, str> = if is_string {
                Cow::Owned(decode_string(raw)?.into_owned())
            } else {
                Cow::Borrowed(raw)
            };
            let fits = match field.field_type {
                FieldType::Int64 => is_json_integer(&number) && number.parse::<i64>().is_ok(),
                _ => is_json_number(&number) && number.parse::<f64>().is_ok_and(f64::is_finite),
            };
            if !fits {
                return Err(wrong(field));
            }
            (number, None)
        }
        FieldType::Date if is_string => {
            let text = decode_string(raw)?;
            let date = (text.len() == 10)
                .then(|| NaiveDate::parse_from_str(&text, "%Y-%m-%d").ok())
                .flatten()
                .filter(|d| (bounds.0.date_naive()..=bounds.1.date_naive()).contains(d));
            if date.is_none() {
                return Err(wrong(field));
            }
            (Cow::Borrowed(raw), None)
        }
        FieldType::Timestamp => {
            let at = is_string
                .then(|| decode_string(raw).ok())
                .flatten()
                .and_then(|text| parse_timestamp(&text))
                .ok_or_else(|| invalid_timestamp(field, raw))?;
            if at < bounds.0 || at > bounds.1 {
                return Err(Rejection::TimestampOutOfRange {
                    field: field.name.clone(),
                    value: shorten(raw).into_owned(),
                    window: format!("{} to {}", canonical(bounds.0), canonical(bounds.1)),
                });
            }
            let text = serde_json::Value::from(canonical(at)).to_string();
            (Cow::Owned(text), Some(at))
        }
        FieldType::String | FieldType::Bool | FieldType::Date => return Err(wrong(field)),
    })
}

fn invalid_timestamp(field: &EventField, raw: &str) -> Rejection {
    Rejection::InvalidTimestamp {
        field: field.name.clone(),
        value: shorten(raw).into_owned(),
    }
}

/// What a type's column accepts, in words.
fn expected(field_type: FieldType) -> &'static str {
    match field_type {
        FieldType::String => "STRING (a JSON string)",
        FieldType::Int64 => "INT64 (a whole number, or a string holding one)",
        FieldType::Float64 => "FLOAT64 (a finite number, or a string holding one)",
        FieldType::Bool => "BOOL (true or false)",
        FieldType::Date => "DATE (a string such as 2026-11-20)",
        FieldType::Timestamp => "TIMESTAMP",
        FieldType::Json => "JSON",
    }
}

/// What a value is, in words, for a reason.
fn describe(raw: &str) -> String {
    match raw.as_bytes().first() {
        Some(b'{') => "an object".to_owned(),
        Some(b'[') => "an array".to_owned(),
        Some(b'"') => format!("a string ({})", shorten(raw)),
        Some(b't' | b'f') => "a boolean".to_owned(),
        _ => format!("a number ({})", shorten(raw)),
    }
}

/// The text of a JSON string token, borrowed when it has no escapes.
fn decode_string(raw: &str) -> Result<Cow<'_, str>, Rejection> {
    let inner = &raw[1..raw.len().saturating_sub(1).max(1)];
    if raw.len() >= 2 && !inner.contains('\\') {
        return Ok(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(raw)
        .map(Cow::Owned)
        .map_err(|e| Rejection::InvalidJson(e.to_string()))
}

/// JSON's number grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn is_json_number(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = usize::from(bytes.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while bytes.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    match bytes.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if bytes.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(bytes.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == bytes.len()
}

fn is_json_integer(text: &str) -> bool {
    is_json_number(text) && !text.contains(['.', 'e', 'E'])
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_number_grammar() {
        for ok in ["0", "-0", "1.5", "1e-05", "12E+3", "0.234", "-12.50"] {
            assert!(is_json_number(ok), "{ok}");
        }
        for bad in [
            "", "-", "01", "1.", ".5", "+1", " 1", "1 ", "0x10", "NaN", "1e", "--1",
        ] {
            assert!(!is_json_number(bad), "{bad:?}");
        }
        assert!(is_json_integer("-42") && !is_json_integer("4.0"));
    }

    #[test]
    fn strings_decode_with_and_without_escapes() {
        assert_eq!(decode_string(r#""abc""#).ok(), Some(Cow::Borrowed("abc")));
        assert_eq!(
            decode_string(r#""a\"b""#).ok().map(Cow::into_owned),
            Some("a\"b".to_owned())
        );
        assert_eq!(decode_string(r#""""#).ok(), Some(Cow::Borrowed("")));
    }
}
