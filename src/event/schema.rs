//! What an event of each kind must look like, derived from `schemas/`: the
//! prediction table's typed columns, and for transactions (kept whole as
//! `json_body`) the contract file `raw_bnpl_txs_json.json_body.json` that
//! lists the body fields the raw table and dbt staging rely on. This is the
//! only place that reads those files.

use std::sync::OnceLock;

use serde::Deserialize;

use crate::keys::EventKind;

/// `schemas/<table>.json` of each kind's table.
pub fn table_schema_json(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Transaction => include_str!("../../schemas/raw_bnpl_txs_json.json"),
        EventKind::Prediction => include_str!("../../schemas/raw_bnpl_prediction_logs.json"),
    }
}

/// Body fields of a transaction that the raw table and dbt staging rely on.
const TRANSACTION_BODY: &str = include_str!("../../schemas/raw_bnpl_txs_json.json_body.json");

/// The column flit-cache fills with the batch's load time.
pub const INGESTION_COLUMN: &str = "_ingestion_timestamp";

/// The JSON column that holds the whole event.
pub fn event_column(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Transaction => "json_body",
        EventKind::Prediction => "raw",
    }
}

/// The BigQuery types the rules understand. A schema with another type is
/// refused when it is read (a unit test reads every schema).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    String,
    Int64,
    Float64,
    Bool,
    Timestamp,
    Date,
    Json,
}

impl FieldType {
    fn from_bigquery(name: &str) -> Option<Self> {
        Some(match name.to_ascii_uppercase().as_str() {
            "STRING" => FieldType::String,
            "INT64" | "INTEGER" => FieldType::Int64,
            "FLOAT64" | "FLOAT" => FieldType::Float64,
            "BOOL" | "BOOLEAN" => FieldType::Bool,
            "TIMESTAMP" => FieldType::Timestamp,
            "DATE" => FieldType::Date,
            "JSON" => FieldType::Json,
            _ => return None,
        })
    }

    /// The name people see in reasons.
    pub fn name(self) -> &'static str {
        match self {
            FieldType::String => "STRING",
            FieldType::Int64 => "INT64",
            FieldType::Float64 => "FLOAT64",
            FieldType::Bool => "BOOL",
            FieldType::Timestamp => "TIMESTAMP",
            FieldType::Date => "DATE",
            FieldType::Json => "JSON",
        }
    }
}

/// One checked field of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventField {
    pub name: String,
    pub field_type: FieldType,
    pub required: bool,
}

/// Where a table column's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnSource {
    /// The whole event (`raw`, `json_body`).
    Event,
    /// The batch's load time.
    Ingestion,
    /// The event field at this index of `EventSchema::fields`.
    Field(usize),
}

/// The rules of one kind.
#[derive(Debug, Clone)]
pub struct EventSchema {
    /// Checked fields, in schema order; the id and time fields among them.
    pub fields: Vec<EventField>,
    /// The table's columns, in order, and where each takes its value.
    pub columns: Vec<(String, ColumnSource)>,
}

#[derive(Deserialize)]
struct SchemaEntry {
    name: String,
    #[serde(rename = "type")]
    field_type: String,
    #[serde(default)]
    mode: Option<String>,
}

fn read(text: &str, file: &str) -> Result<Vec<EventField>, String> {
    let entries: Vec<SchemaEntry> =
        serde_json::from_str(text).map_err(|e| format!("schemas/{file}: {e}"))?;
    entries
        .into_iter()
        .map(|entry| {
            let mode = entry.mode.as_deref().unwrap_or("NULLABLE");
            if mode.eq_ignore_ascii_case("REPEATED") {
                return Err(format!(
                    "schemas/{file}: {} is REPEATED, which the rules do not support",
                    entry.name
                ));
            }
            Ok(EventField {
                field_type: FieldType::from_bigquery(&entry.field_type).ok_or_else(|| {
                    format!(
                        "schemas/{file}: {} has type {}, which the rules do not support",
                        entry.name, entry.field_type
                    )
                })?,
                name: entry.name,
                required: mode.eq_ignore_ascii_case("REQUIRED"),
            })
        })
        .collect()
}

impl EventSchema {
    fn build(kind: EventKind) -> Result<Self, String> {
        let columns = read(
            table_schema_json(kind),
            &format!("{}.json", table_name(kind)),
        )?;
        let own = [event_column(kind), INGESTION_COLUMN];
        let mut fields: Vec<EventField> = columns
            .iter()
            .filter(|c| !own.contains(&c.name.as_str()))
            .cloned()
            .collect();
        if kind == EventKind::Transaction {
            fields.extend(read(TRANSACTION_BODY, "raw_bnpl_txs_json.json_body.json")?);
        }
        for (name, wanted) in [
            (kind.id_field(), FieldType::String),
            (kind.timestamp_field(), FieldType::Timestamp),
        ] {
            if !fields
                .iter()
                .any(|f| f.name == name && f.field_type == wanted && f.required)
            {
                return Err(format!(
                    "schemas/: {name} must be a REQUIRED {} field of {kind}",
                    wanted.name()
                ));
            }
        }
        for name in own {
            if !columns.iter().any(|c| c.name == name) {
                return Err(format!("schemas/: the {kind} table has no column {name}"));
            }
        }
        let columns = columns
            .into_iter()
            .map(|column| {
                let source = if column.name == event_column(kind) {
                    ColumnSource::Event
                } else if column.name == INGESTION_COLUMN {
                    ColumnSource::Ingestion
                } else {
                    let index = fields
                        .iter()
                        .position(|f| f.name == column.name)
                        .ok_or_else(|| {
                            format!("schemas/: column {} has no event field", column.name)
                        })?;
                    ColumnSource::Field(index)
                };
                Ok((column.name, source))
            })
            .collect::<Result<_, String>>()?;
        Ok(EventSchema { fields, columns })
    }

    /// The BigQuery type of a table column.
    pub fn column_type(&self, name: &str) -> Option<FieldType> {
        let (_, source) = self.columns.iter().find(|(column, _)| column == name)?;
        Some(match source {
            ColumnSource::Event => FieldType::Json,
            ColumnSource::Ingestion => FieldType::Timestamp,
            ColumnSource::Field(index) => self.fields.get(*index)?.field_type,
        })
    }

    /// The rules of `kind`, read once from the schemas compiled in.
    pub fn for_kind(kind: EventKind) -> &'static EventSchema {
        static TRANSACTIONS: OnceLock<EventSchema> = OnceLock::new();
        static PREDICTIONS: OnceLock<EventSchema> = OnceLock::new();
        let cell = match kind {
            EventKind::Transaction => &TRANSACTIONS,
            EventKind::Prediction => &PREDICTIONS,
        };
        // The files are compiled in and `embedded_schemas_are_usable` reads
        // them in every test run, so this cannot fail at run time.
        cell.get_or_init(|| EventSchema::build(kind).unwrap_or_else(|problem| panic!("{problem}")))
    }
}

/// The table of each kind, as named in `schemas/`.
pub fn table_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Transaction => "raw_bnpl_txs_json",
        EventKind::Prediction => "raw_bnpl_prediction_logs",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_schemas_are_usable() {
        for kind in EventKind::ALL {
            let schema = EventSchema::build(kind).expect("schemas/ are valid");
            assert!(schema.fields.iter().any(|f| f.name == kind.id_field()));
            assert!(
                schema
                    .fields
                    .iter()
                    .all(|f| f.name != event_column(kind) && f.name != INGESTION_COLUMN)
            );
        }
    }

    #[test]
    fn prediction_rules_are_the_table_columns() {
        let schema = EventSchema::for_kind(EventKind::Prediction);
        let names: Vec<&str> = schema.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "prediction_id",
                "transaction_id",
                "customer_id",
                "model_predictions",
                "selected_model",
                "selected_prediction",
                "business_decision",
                "risk_level",
                "processing_time_ms",
                "prediction_timestamp"
            ]
        );
        assert_eq!(schema.columns.len(), 12);
    }

    #[test]
    fn transaction_rules_are_the_partition_column_and_the_body_contract() {
        let schema = EventSchema::for_kind(EventKind::Transaction);
        let amount = schema
            .fields
            .iter()
            .find(|f| f.name == "amount")
            .expect("amount is in the contract");
        assert_eq!(amount.field_type, FieldType::Float64);
        assert!(schema.fields.iter().any(|f| f.name == "_timestamp"));
    }

    #[test]
    fn unsupported_types_are_refused_when_read() {
        let err = read(r#"[{"name":"x","type":"GEOGRAPHY"}]"#, "t.json").expect_err("type");
        assert!(err.contains("GEOGRAPHY"), "{err}");
        let err = read(
            r#"[{"name":"x","type":"STRING","mode":"REPEATED"}]"#,
            "t.json",
        )
        .expect_err("mode");
        assert!(err.contains("REPEATED"), "{err}");
    }
}
