//! From cached record to warehouse row, checked against the table schema
//! (`schemas/*.json`) before anything is sent: a record that cannot be a
//! valid row is refused here with the reason, and dead-lettered by the
//! uploader instead of failing its batch.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use crate::keys::EventKind;

/// A record that cannot become a row of its table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RowError(pub String);

impl RowError {
    pub const CODE: &'static str = "schema_mismatch";
}

/// One row, ready for the sink, and the day partition it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub day: NaiveDate,
    /// Column name to value; JSON columns hold the JSON value itself.
    pub columns: Map<String, Value>,
}

/// Prediction columns that are plain strings.
const PREDICTION_STRINGS: [&str; 5] = [
    "transaction_id",
    "customer_id",
    "selected_model",
    "business_decision",
    "risk_level",
];
/// Prediction columns that are FLOAT64.
const PREDICTION_NUMBERS: [&str; 2] = ["selected_prediction", "processing_time_ms"];

pub fn to_row(kind: EventKind, payload: &str, ingested_at: DateTime<Utc>) -> Result<Row, RowError> {
    let value: Value =
        serde_json::from_str(payload).map_err(|e| RowError(format!("record is not JSON: {e}")))?;
    let Value::Object(object) = value else {
        return Err(RowError("record is not a JSON object".into()));
    };
    let ingested = timestamp_text(ingested_at);
    match kind {
        EventKind::Transaction => {
            let at = required_time(&object, "_timestamp")?;
            let mut columns = Map::new();
            columns.insert("_timestamp".into(), timestamp_text(at).into());
            columns.insert("json_body".into(), Value::Object(object));
            columns.insert("_ingestion_timestamp".into(), ingested.into());
            Ok(Row {
                day: at.date_naive(),
                columns,
            })
        }
        EventKind::Prediction => {
            let at = required_time(&object, "prediction_timestamp")?;
            let mut columns = Map::new();
            match object.get("prediction_id") {
                Some(Value::String(id)) if !id.is_empty() => {
                    columns.insert("prediction_id".into(), id.clone().into())
                }
                _ => {
                    return Err(RowError(
                        "`prediction_id` must be a non-empty string (REQUIRED STRING)".into(),
                    ));
                }
            };
            for field in PREDICTION_STRINGS {
                match object.get(field) {
                    None | Some(Value::Null) => None,
                    Some(Value::String(text)) => columns.insert(field.into(), text.clone().into()),
                    Some(other) => return Err(mismatch(field, "STRING", other)),
                };
            }
            for field in PREDICTION_NUMBERS {
                match object.get(field) {
                    None | Some(Value::Null) => None,
                    Some(Value::Number(n)) if n.as_f64().is_some_and(f64::is_finite) => {
                        columns.insert(field.into(), Value::Number(n.clone()))
                    }
                    Some(other) => return Err(mismatch(field, "FLOAT64", other)),
                };
            }
            match object.get("model_predictions") {
                None | Some(Value::Null) => None,
                Some(scores @ Value::Object(_)) => {
                    columns.insert("model_predictions".into(), scores.clone())
                }
                Some(other) => return Err(mismatch("model_predictions", "JSON object", other)),
            };
            columns.insert("prediction_timestamp".into(), timestamp_text(at).into());
            columns.insert("raw".into(), Value::Object(object));
            columns.insert("_ingestion_timestamp".into(), ingested.into());
            Ok(Row {
                day: at.date_naive(),
                columns,
            })
        }
    }
}

/// BigQuery's canonical TIMESTAMP text, in UTC with microseconds.
pub fn timestamp_text(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn required_time(object: &Map<String, Value>, field: &str) -> Result<DateTime<Utc>, RowError> {
    match object.get(field) {
        Some(Value::String(text)) => DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                RowError(format!(
                    "`{field}` is not an RFC 3339 time (REQUIRED TIMESTAMP)"
                ))
            }),
        Some(other) => Err(mismatch(field, "TIMESTAMP", other)),
        None => Err(RowError(format!(
            "`{field}` is missing (REQUIRED TIMESTAMP)"
        ))),
    }
}

fn mismatch(field: &str, expected: &str, found: &Value) -> RowError {
    let found = match found {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    RowError(format!("`{field}` is {found}, the column is {expected}"))
}

/// The row as one NDJSON line, the form `bq load --source_format=NEWLINE_DELIMITED_JSON` takes.
pub fn ndjson_line(row: &Row) -> String {
    json!(row.columns).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    #[test]
    fn transaction_row_keeps_the_body_and_lands_on_its_event_day() {
        let payload =
            r#"{"_timestamp":"2025-09-27T23:30:00-02:00","transaction_id":"t1","amount":299.99}"#;
        let row = to_row(EventKind::Transaction, payload, at()).expect("valid");
        assert_eq!(
            row.day.to_string(),
            "2025-09-28",
            "UTC day of the event, not of the upload"
        );
        assert_eq!(row.columns["_timestamp"], "2025-09-28T01:30:00.000000Z");
        assert_eq!(row.columns["json_body"]["amount"], 299.99);
        assert_eq!(
            row.columns["_ingestion_timestamp"],
            "2026-01-02T03:04:05.123456Z"
        );
    }

    #[test]
    fn prediction_row_has_typed_columns_and_raw() {
        let payload = r#"{"prediction_timestamp":"2025-09-27T14:30:00Z","prediction_id":"p1","transaction_id":"t1","model_predictions":{"ridge":0.2},"selected_model":"ridge","selected_prediction":0.2,"business_decision":"approve","risk_level":"LOW","processing_time_ms":23.4,"new_field":[1]}"#;
        let row = to_row(EventKind::Prediction, payload, at()).expect("valid");
        assert_eq!(row.columns["prediction_id"], "p1");
        assert_eq!(row.columns["selected_prediction"], 0.2);
        assert_eq!(row.columns["model_predictions"]["ridge"], 0.2);
        assert_eq!(
            row.columns["raw"]["new_field"][0], 1,
            "new fields kept in raw"
        );
        assert!(
            !row.columns.contains_key("customer_id"),
            "absent stays absent (NULL)"
        );
    }

    #[test]
    fn records_that_cannot_be_rows_say_why() {
        let cases = [
            (
                EventKind::Prediction,
                r#"{"prediction_timestamp":"2025-09-27T14:30:00Z","prediction_id":"p","selected_prediction":"high"}"#,
                "`selected_prediction` is a string, the column is FLOAT64",
            ),
            (
                EventKind::Prediction,
                r#"{"prediction_timestamp":"2025-09-27T14:30:00Z","prediction_id":"p","risk_level":3}"#,
                "`risk_level` is a number, the column is STRING",
            ),
            (
                EventKind::Prediction,
                r#"{"prediction_timestamp":"2025-09-27T14:30:00Z","prediction_id":"p","model_predictions":[0.1]}"#,
                "`model_predictions` is an array",
            ),
            (
                EventKind::Prediction,
                r#"{"prediction_id":"p"}"#,
                "`prediction_timestamp` is missing",
            ),
            (
                EventKind::Transaction,
                r#"{"transaction_id":"t","_timestamp":"soon"}"#,
                "`_timestamp` is not an RFC 3339 time",
            ),
            (EventKind::Transaction, "[]", "not a JSON object"),
        ];
        for (kind, payload, expected) in cases {
            let err = to_row(kind, payload, at()).expect_err(payload);
            assert!(err.0.contains(expected), "{payload}: {err}");
        }
    }

    #[test]
    fn ndjson_line_is_one_line() {
        let payload = r#"{"_timestamp":"2025-09-27T14:30:00Z","transaction_id":"t\n1"}"#;
        let line = ndjson_line(&to_row(EventKind::Transaction, payload, at()).expect("valid"));
        assert!(!line.contains('\n'));
    }
}
