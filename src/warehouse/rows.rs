//! From cached record to warehouse row. The record is checked with the
//! door's own rules (`event::check`), so a record the door accepted always
//! becomes a row; one that cannot (written by an older binary) is refused
//! here with the door's reason and dead-lettered instead of failing its
//! batch. The row is written in the table's column order: typed columns as
//! the door normalised them, the event column as the record's own text.

use chrono::{DateTime, NaiveDate, Utc};

use crate::event::json_text::minify;
use crate::event::schema::ColumnSource;
use crate::event::{self, EventSchema, Rejection, check};
use crate::keys::EventKind;

pub use crate::event::time::canonical as timestamp_text;

/// One row, ready for the sink, and the day partition it belongs to. The
/// row is kept as its finished NDJSON line (JSON columns as JSON values), the
/// form load jobs and the local warehouse take: a tree of values would cost
/// several times the memory of the text.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub day: NaiveDate,
    /// The partition column's time.
    pub at: DateTime<Utc>,
    pub json: String,
}

/// Builds the row of a record. Records are one line already; an older
/// record that is not is made one, so no row can span two lines.
pub fn to_row(
    kind: EventKind,
    payload: &str,
    ingested_at: DateTime<Utc>,
) -> Result<Row, Rejection> {
    let text = String::from_utf8(minify(payload.as_bytes()))
        .map_err(|e| Rejection::InvalidJson(format!("not UTF-8 ({e})")))?;
    let checked = check(kind, &text, None)?;
    let at = match checked.time {
        event::check::EventTime::Present(at) => at,
        event::check::EventTime::Missing { .. } => {
            return Err(Rejection::MissingField(kind.timestamp_field().to_owned()));
        }
    };
    let ingested = serde_json::Value::from(timestamp_text(ingested_at)).to_string();
    let schema = EventSchema::for_kind(kind);
    let mut json = String::with_capacity(text.len() * 2 + 128);
    json.push('{');
    for (name, source) in &schema.columns {
        let value = match source {
            ColumnSource::Event => &text,
            ColumnSource::Ingestion => &ingested,
            ColumnSource::Field(index) => match checked.values.get(*index) {
                Some(Some(value)) => value.as_ref(),
                _ => continue,
            },
        };
        if json.len() > 1 {
            json.push(',');
        }
        // Column names come from schemas/ and need no escaping, but
        // serialising keeps that true.
        json.push_str(&serde_json::Value::from(name.as_str()).to_string());
        json.push(':');
        json.push_str(value);
    }
    json.push('}');
    Ok(Row {
        day: at.date_naive(),
        at,
        json,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn columns(row: &Row) -> Value {
        serde_json::from_str(&row.json).expect("a row is JSON")
    }

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    #[test]
    fn transaction_row_keeps_the_body_and_lands_on_its_event_day() {
        let payload =
            r#"{"_timestamp":"2025-09-27T23:30:00-02:00","transaction_id":"t1","amount":299.990}"#;
        let row = to_row(EventKind::Transaction, payload, at()).expect("valid");
        let columns = columns(&row);
        assert_eq!(
            row.day.to_string(),
            "2025-09-28",
            "UTC day of the event, not of the upload"
        );
        assert_eq!(columns["_timestamp"], "2025-09-28T01:30:00.000000Z");
        assert_eq!(columns["json_body"]["amount"], 299.99);
        assert!(
            row.json.contains(r#""amount":299.990"#),
            "number kept as written"
        );
        assert_eq!(
            columns["_ingestion_timestamp"],
            "2026-01-02T03:04:05.123456Z"
        );
    }

    #[test]
    fn prediction_row_has_typed_columns_and_raw() {
        let payload = r#"{"prediction_timestamp":"2025-09-27 14:30:00","prediction_id":"p1","transaction_id":"t1","model_predictions":{"ridge":0.2},"selected_model":"ridge","selected_prediction":"0.2","business_decision":"approve","risk_level":"LOW","processing_time_ms":23.4,"new_field":[1]}"#;
        let row = to_row(EventKind::Prediction, payload, at()).expect("valid");
        let columns = columns(&row);
        assert_eq!(columns["prediction_id"], "p1");
        assert_eq!(
            columns["selected_prediction"], 0.2,
            "numeric string is a number"
        );
        assert_eq!(
            columns["raw"]["selected_prediction"], "0.2",
            "raw keeps the text"
        );
        assert_eq!(
            columns["prediction_timestamp"],
            "2025-09-27T14:30:00.000000Z"
        );
        assert_eq!(columns["model_predictions"]["ridge"], 0.2);
        assert_eq!(columns["raw"]["new_field"][0], 1, "new fields kept in raw");
        assert!(
            columns.get("customer_id").is_none(),
            "absent stays absent (NULL)"
        );
    }

    #[test]
    fn an_indented_record_becomes_one_line() {
        let payload = "{\n  \"_timestamp\": \"2025-09-27T14:30:00Z\",\n  \"transaction_id\": \"t1\",\n  \"note\": \"a\\nb\",\n  \"nested\": {\n    \"a\": 1\n  }\n}";
        let row = to_row(EventKind::Transaction, payload, at()).expect("valid");
        assert!(!row.json.contains('\n'));
        assert_eq!(columns(&row)["json_body"]["nested"]["a"], 1);
    }

    #[test]
    fn records_that_cannot_be_rows_say_why() {
        let cases = [
            (
                EventKind::Prediction,
                r#"{"prediction_timestamp":"2025-09-27T14:30:00Z","prediction_id":"p","selected_prediction":"high"}"#,
                "invalid_type",
            ),
            (
                EventKind::Prediction,
                r#"{"prediction_timestamp":"2025-09-27T14:30:00Z","prediction_id":"p","risk_level":3}"#,
                "invalid_type",
            ),
            (
                EventKind::Prediction,
                r#"{"prediction_id":"p"}"#,
                "missing_field",
            ),
            (
                EventKind::Transaction,
                r#"{"transaction_id":"t","_timestamp":"soon"}"#,
                "invalid_timestamp",
            ),
            (
                EventKind::Transaction,
                r#"{"transaction_id":"t","_timestamp":"0000-01-01T00:00:00Z"}"#,
                "timestamp_out_of_range",
            ),
            (EventKind::Transaction, "[]", "not_an_object"),
        ];
        for (kind, payload, code) in cases {
            let err = to_row(kind, payload, at()).expect_err(payload);
            assert_eq!(err.code(), code, "{payload}: {err}");
        }
    }
}
