//! Schema changes that reach an existing table: what `schemas/` asks for
//! against what the table has, reduced to the changes BigQuery applies in
//! place (a new NULLABLE column, a REQUIRED column made NULLABLE), or a
//! refusal that names the column when it asks for more (a new type, a new
//! REQUIRED column). Pure, so every rule is unit tested; the sinks apply
//! the plan (`tables.patch`, and load jobs that allow field addition).

use serde_json::Value;

/// One change BigQuery makes in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaChange {
    /// A column schemas/ has and the table lacks, added NULLABLE.
    Added(String),
    /// A REQUIRED column that schemas/ makes NULLABLE.
    Relaxed(String),
}

impl std::fmt::Display for SchemaChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SchemaChange::Added(name) => write!(f, "added column {name} (NULLABLE)"),
            SchemaChange::Relaxed(name) => write!(f, "made column {name} NULLABLE"),
        }
    }
}

/// The table's new field list and the changes that lead to it; empty when
/// the table already has what schemas/ asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaPlan {
    pub fields: Vec<Value>,
    pub changes: Vec<SchemaChange>,
    /// Columns the table has and schemas/ does not: kept (BigQuery drops no
    /// column in place, and old rows hold values there).
    pub kept: Vec<String>,
    /// REQUIRED in schemas/ but NULLABLE in the table: BigQuery cannot
    /// tighten a mode; the door enforces it for new rows.
    pub not_tightened: Vec<String>,
}

fn name(field: &Value) -> String {
    field["name"].as_str().unwrap_or_default().to_owned()
}

fn mode(field: &Value) -> &str {
    field["mode"].as_str().unwrap_or("NULLABLE")
}

/// BigQuery answers with the legacy names (FLOAT for FLOAT64...).
fn canonical_type(field: &Value) -> String {
    match field["type"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_uppercase()
        .as_str()
    {
        "FLOAT" => "FLOAT64".into(),
        "INTEGER" => "INT64".into(),
        "BOOLEAN" => "BOOL".into(),
        "RECORD" => "STRUCT".into(),
        other => other.to_owned(),
    }
}

/// Plans the change from `existing` (the table's fields, as BigQuery
/// returns them) to `wanted` (schemas/). Column names compare without case,
/// as BigQuery's do. An error names the column and why BigQuery cannot
/// change it in place.
pub fn plan(existing: &[Value], wanted: &[Value]) -> Result<SchemaPlan, String> {
    let find = |fields: &[Value], field: &Value| -> Option<usize> {
        let wanted_name = name(field).to_ascii_lowercase();
        fields
            .iter()
            .position(|f| name(f).to_ascii_lowercase() == wanted_name)
    };
    let mut fields: Vec<Value> = existing.to_vec();
    let mut plan = SchemaPlan {
        fields: Vec::new(),
        changes: Vec::new(),
        kept: Vec::new(),
        not_tightened: Vec::new(),
    };
    for want in wanted {
        match find(existing, want) {
            Some(at) => {
                let have = &existing[at];
                if canonical_type(have) != canonical_type(want) {
                    return Err(format!(
                        "column {} is {} in the table and {} in schemas/: BigQuery cannot change a column's type in place (add a new column, or recreate the table)",
                        name(want),
                        canonical_type(have),
                        canonical_type(want)
                    ));
                }
                if canonical_type(want) == "STRUCT" && have["fields"] != want["fields"] {
                    return Err(format!(
                        "column {} is a RECORD whose fields differ from schemas/: nested changes are not applied",
                        name(want)
                    ));
                }
                if mode(have) != mode(want) {
                    match (mode(have), mode(want)) {
                        ("REQUIRED", "NULLABLE") => {
                            fields[at]["mode"] = Value::from("NULLABLE");
                            plan.changes.push(SchemaChange::Relaxed(name(want)));
                        }
                        ("NULLABLE", "REQUIRED") => plan.not_tightened.push(name(want)),
                        (have_mode, want_mode) => {
                            return Err(format!(
                                "column {} is {have_mode} in the table and {want_mode} in schemas/: BigQuery cannot change that in place",
                                name(want)
                            ));
                        }
                    }
                }
            }
            None => {
                if mode(want) == "REQUIRED" {
                    return Err(format!(
                        "column {} is new and REQUIRED in schemas/: BigQuery adds only NULLABLE columns to a table that has rows (make it NULLABLE; the door can still require it)",
                        name(want)
                    ));
                }
                fields.push(want.clone());
                plan.changes.push(SchemaChange::Added(name(want)));
            }
        }
    }
    plan.kept = existing
        .iter()
        .filter(|have| find(wanted, have).is_none())
        .map(name)
        .collect();
    plan.fields = fields;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(name: &str, kind: &str, mode: &str) -> Value {
        json!({"name": name, "type": kind, "mode": mode})
    }

    #[test]
    fn a_table_that_matches_needs_nothing_whatever_the_type_spelling() {
        let table = [
            field("a", "FLOAT", "REQUIRED"),
            json!({"name": "B", "type": "INTEGER"}),
        ];
        let wanted = [
            field("a", "FLOAT64", "REQUIRED"),
            field("b", "INT64", "NULLABLE"),
        ];
        let plan = plan(&table, &wanted).expect("plan");
        assert!(plan.changes.is_empty(), "{plan:?}");
        assert_eq!(plan.fields, table.to_vec());
    }

    #[test]
    fn new_nullable_columns_are_appended_and_required_ones_relaxed() {
        let table = [
            field("a", "STRING", "REQUIRED"),
            field("old", "STRING", "NULLABLE"),
        ];
        let wanted = [
            field("a", "STRING", "NULLABLE"),
            field("new", "FLOAT64", "NULLABLE"),
        ];
        let plan = plan(&table, &wanted).expect("plan");
        assert_eq!(
            plan.changes,
            [
                SchemaChange::Relaxed("a".into()),
                SchemaChange::Added("new".into())
            ]
        );
        assert_eq!(
            plan.fields,
            [
                field("a", "STRING", "NULLABLE"),
                field("old", "STRING", "NULLABLE"),
                field("new", "FLOAT64", "NULLABLE")
            ]
        );
        assert_eq!(plan.kept, ["old"], "a column schemas/ dropped is kept");
    }

    #[test]
    fn what_bigquery_cannot_do_in_place_is_refused_by_name() {
        let table = [field("a", "STRING", "NULLABLE")];
        let err = plan(&table, &[field("a", "FLOAT64", "NULLABLE")]).expect_err("type");
        assert!(
            err.contains("column a is STRING in the table and FLOAT64"),
            "{err}"
        );
        let err = plan(
            &table,
            &[
                field("a", "STRING", "NULLABLE"),
                field("b", "STRING", "REQUIRED"),
            ],
        )
        .expect_err("required");
        assert!(err.contains("column b is new and REQUIRED"), "{err}");
        let err = plan(&table, &[field("a", "STRING", "REPEATED")]).expect_err("repeated");
        assert!(err.contains("NULLABLE in the table and REPEATED"), "{err}");
        let tightened = plan(&table, &[field("a", "STRING", "REQUIRED")]).expect("plan");
        assert!(tightened.changes.is_empty());
        assert_eq!(tightened.not_tightened, ["a"]);
    }

    proptest::proptest! {
        /// Whatever the table holds, an accepted plan keeps every existing
        /// column, in place and of the same type, and ends up with every
        /// column schemas/ asks for.
        #[test]
        fn an_accepted_plan_keeps_every_column_and_adds_what_is_asked(
            existing in proptest::collection::vec((0u8..6, 0u8..3, proptest::bool::ANY), 0..6),
            wanted in proptest::collection::vec((0u8..6, 0u8..3, proptest::bool::ANY), 0..6),
        ) {
            let types = ["STRING", "FLOAT64", "TIMESTAMP"];
            let dedup = |columns: Vec<(u8, u8, bool)>| -> Vec<Value> {
                let mut seen = std::collections::HashSet::new();
                columns.into_iter().filter(|(n, _, _)| seen.insert(*n)).map(|(n, t, required)| {
                    field(&format!("c{n}"), types[t as usize], if required { "REQUIRED" } else { "NULLABLE" })
                }).collect()
            };
            let (existing, wanted) = (dedup(existing), dedup(wanted));
            if let Ok(plan) = plan(&existing, &wanted) {
                for (at, have) in existing.iter().enumerate() {
                    proptest::prop_assert_eq!(name(&plan.fields[at]), name(have));
                    proptest::prop_assert_eq!(canonical_type(&plan.fields[at]), canonical_type(have));
                }
                for want in &wanted {
                    let got = plan.fields.iter().find(|f| name(f) == name(want));
                    proptest::prop_assert!(got.is_some());
                    proptest::prop_assert_eq!(canonical_type(got.unwrap_or(want)), canonical_type(want));
                }
                proptest::prop_assert_eq!(plan.fields.len(), existing.len() + wanted.iter().filter(|w| !existing.iter().any(|e| name(e) == name(w))).count());
            }
        }
    }
}
