//! The local warehouse (`FLIT_WAREHOUSE_DIR`) as tests read it: the rows
//! of a table, by day folder, and their ids.

use super::binary::Env;

pub const TX_TABLE: &str = "flit_bnpl_raw.raw_bnpl_txs_json";
pub const PRED_TABLE: &str = "flit_ml_raw.raw_bnpl_prediction_logs";

/// Every row in the local warehouse for `table`, with the day folder it sits in.
pub fn warehouse_rows(env: &Env, table: &str) -> Vec<(String, serde_json::Value)> {
    let dir = env.dir.path().join("warehouse").join(table);
    let mut rows = Vec::new();
    let Ok(days) = std::fs::read_dir(&dir) else {
        return rows;
    };
    for day in days.filter_map(Result::ok) {
        let name = day.file_name().to_string_lossy().into_owned();
        let Some(dt) = name.strip_prefix("dt=") else {
            continue;
        };
        for file in std::fs::read_dir(day.path())
            .expect("day folder")
            .filter_map(Result::ok)
        {
            let file_name = file.file_name().to_string_lossy().into_owned();
            if file_name.starts_with('.') || !file_name.ends_with(".ndjson") {
                continue; // temporary files are not part of the warehouse
            }
            let text = std::fs::read_to_string(file.path()).expect("read");
            for line in text.lines() {
                rows.push((
                    dt.to_owned(),
                    serde_json::from_str(line).expect("each line is JSON"),
                ));
            }
        }
    }
    rows
}

/// Row ids of a table: transaction_id in json_body, or prediction_id.
pub fn row_ids(rows: &[(String, serde_json::Value)]) -> Vec<String> {
    rows.iter()
        .map(|(_, row)| {
            row["prediction_id"]
                .as_str()
                .or_else(|| row["json_body"]["transaction_id"].as_str())
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}
