//! From cached record to warehouse row, checked against the table schema
//! (`schemas/*.json`) before anything is sent: a record that cannot be a
//! valid row is refused here with the reason, and dead-lettered by the
//! uploader instead of failing its batch.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Number, Value};

use crate::keys::EventKind;

/// A record that cannot become a row of its table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RowError(pub String);

impl RowError {
    pub const CODE: &'static str = "schema_mismatch";
}

/// One row, ready for the sink, and the day partition it belongs to. The
/// row is kept as its finished NDJSON line (JSON columns as JSON values), the
/// form load jobs and the local warehouse take: a tree of values would cost
/// several times the memory of the text.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub day: NaiveDate,
    pub json: String,
}

/// The fields of a transaction record the row needs; the rest stays in the
/// payload, which becomes `json_body` verbatim.
#[derive(Deserialize)]
struct TransactionFields {
    #[serde(rename = "_timestamp")]
    timestamp: Option<Value>,
}

/// The typed columns of a prediction; `raw` is the payload verbatim.
#[derive(Deserialize)]
struct PredictionFields<'a> {
    prediction_id: Option<Value>,
    transaction_id: Option<Value>,
    customer_id: Option<Value>,
    selected_model: Option<Value>,
    business_decision: Option<Value>,
    risk_level: Option<Value>,
    selected_prediction: Option<Value>,
    processing_time_ms: Option<Value>,
    prediction_timestamp: Option<Value>,
    #[serde(borrow)]
    model_predictions: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct TransactionRow<'a> {
    _timestamp: String,
    json_body: &'a RawValue,
    _ingestion_timestamp: &'a str,
}

#[derive(Serialize)]
struct PredictionRow<'a> {
    prediction_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    transaction_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    customer_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model_predictions: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    selected_model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    selected_prediction: Option<&'a Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    business_decision: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    risk_level: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    processing_time_ms: Option<&'a Number>,
    prediction_timestamp: String,
    raw: &'a RawValue,
    _ingestion_timestamp: &'a str,
}

/// Builds the row of a record, checking it against the table's schema. Only
/// the typed fields are parsed; JSON columns are the record's own text.
pub fn to_row(kind: EventKind, payload: &str, ingested_at: DateTime<Utc>) -> Result<Row, RowError> {
    let body: &RawValue =
        serde_json::from_str(payload).map_err(|e| RowError(format!("record is not JSON: {e}")))?;
    if !body.get().trim_start().starts_with('{') {
        return Err(RowError("record is not a JSON object".into()));
    }
    let ingested = timestamp_text(ingested_at);
    let not_a_row = |e: serde_json::Error| RowError(format!("record does not fit the table: {e}"));
    let (day, json) = match kind {
        EventKind::Transaction => {
            let fields: TransactionFields = serde_json::from_str(payload).map_err(not_a_row)?;
            let at = required_time("_timestamp", fields.timestamp.as_ref())?;
            let row = TransactionRow {
                _timestamp: timestamp_text(at),
                json_body: body,
                _ingestion_timestamp: &ingested,
            };
            (at.date_naive(), serde_json::to_string(&row))
        }
        EventKind::Prediction => {
            let fields: PredictionFields = serde_json::from_str(payload).map_err(not_a_row)?;
            let at = required_time("prediction_timestamp", fields.prediction_timestamp.as_ref())?;
            let prediction_id = match &fields.prediction_id {
                Some(Value::String(id)) if !id.is_empty() => id.as_str(),
                _ => {
                    return Err(RowError(
                        "`prediction_id` must be a non-empty string (REQUIRED STRING)".into(),
                    ));
                }
            };
            if let Some(scores) = fields.model_predictions
                && !scores.get().trim_start().starts_with(['{', 'n'])
            {
                let found: Value = serde_json::from_str(scores.get()).unwrap_or(Value::Null);
                return Err(mismatch("model_predictions", "JSON object", &found));
            }
            let row = PredictionRow {
                prediction_id,
                transaction_id: string_column("transaction_id", &fields.transaction_id)?,
                customer_id: string_column("customer_id", &fields.customer_id)?,
                model_predictions: fields.model_predictions.filter(|v| v.get() != "null"),
                selected_model: string_column("selected_model", &fields.selected_model)?,
                selected_prediction: number_column(
                    "selected_prediction",
                    &fields.selected_prediction,
                )?,
                business_decision: string_column("business_decision", &fields.business_decision)?,
                risk_level: string_column("risk_level", &fields.risk_level)?,
                processing_time_ms: number_column(
                    "processing_time_ms",
                    &fields.processing_time_ms,
                )?,
                prediction_timestamp: timestamp_text(at),
                raw: body,
                _ingestion_timestamp: &ingested,
            };
            (at.date_naive(), serde_json::to_string(&row))
        }
    };
    let json = json.map_err(|e| RowError(format!("cannot write the row: {e}")))?;
    Ok(Row { day, json })
}

fn string_column<'a>(field: &str, value: &'a Option<Value>) -> Result<Option<&'a str>, RowError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(other) => Err(mismatch(field, "STRING", other)),
    }
}

fn number_column<'a>(
    field: &str,
    value: &'a Option<Value>,
) -> Result<Option<&'a Number>, RowError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.as_f64().is_some_and(f64::is_finite) => Ok(Some(n)),
        Some(other) => Err(mismatch(field, "FLOAT64", other)),
    }
}

/// BigQuery's canonical TIMESTAMP text, in UTC with microseconds.
pub fn timestamp_text(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn required_time(field: &str, value: Option<&Value>) -> Result<DateTime<Utc>, RowError> {
    match value {
        Some(Value::String(text)) => DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                RowError(format!(
                    "`{field}` is not an RFC 3339 time (REQUIRED TIMESTAMP)"
                ))
            }),
        None | Some(Value::Null) => Err(RowError(format!(
            "`{field}` is missing (REQUIRED TIMESTAMP)"
        ))),
        Some(other) => Err(mismatch(field, "TIMESTAMP", other)),
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

#[cfg(test)]
mod tests {
    use super::*;

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
            r#"{"_timestamp":"2025-09-27T23:30:00-02:00","transaction_id":"t1","amount":299.99}"#;
        let row = to_row(EventKind::Transaction, payload, at()).expect("valid");
        let columns = columns(&row);
        assert_eq!(
            row.day.to_string(),
            "2025-09-28",
            "UTC day of the event, not of the upload"
        );
        assert_eq!(columns["_timestamp"], "2025-09-28T01:30:00.000000Z");
        assert_eq!(columns["json_body"]["amount"], 299.99);
        assert_eq!(
            columns["_ingestion_timestamp"],
            "2026-01-02T03:04:05.123456Z"
        );
    }

    #[test]
    fn prediction_row_has_typed_columns_and_raw() {
        let payload = r#"{"prediction_timestamp":"2025-09-27T14:30:00Z","prediction_id":"p1","transaction_id":"t1","model_predictions":{"ridge":0.2},"selected_model":"ridge","selected_prediction":0.2,"business_decision":"approve","risk_level":"LOW","processing_time_ms":23.4,"new_field":[1]}"#;
        let row = to_row(EventKind::Prediction, payload, at()).expect("valid");
        let columns = columns(&row);
        assert_eq!(columns["prediction_id"], "p1");
        assert_eq!(columns["selected_prediction"], 0.2);
        assert_eq!(columns["model_predictions"]["ridge"], 0.2);
        assert_eq!(columns["raw"]["new_field"][0], 1, "new fields kept in raw");
        assert!(
            columns.get("customer_id").is_none(),
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
        let row = to_row(EventKind::Transaction, payload, at()).expect("valid");
        assert!(!row.json.contains('\n'));
    }
}
