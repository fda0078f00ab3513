//! The local warehouse: NDJSON files under
//! `FLIT_WAREHOUSE_DIR/<dataset>.<table>/dt=YYYY-MM-DD/<batch_id>.ndjson`,
//! one file per batch and day, that `bq load --source_format=NEWLINE_DELIMITED_JSON`
//! takes as they are. Each file is written to a temporary file of its
//! writer's own, fsync'd and renamed without replacing, so a file is either
//! complete or absent and never the mix of two writers; a batch written again
//! after a crash completes the days it missed and leaves the others alone.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;

use chrono::{DateTime, Utc};

use super::{Freshness, RowBatch, SinkError, TableSpec, Warehouse, WriteOutcome};

#[derive(Debug, Clone)]
pub struct LocalWarehouse {
    root: PathBuf,
}

impl LocalWarehouse {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalWarehouse { root: root.into() }
    }

    pub fn table_dir(&self, table: TableSpec) -> PathBuf {
        self.root.join(table.qualified())
    }
}

impl Warehouse for LocalWarehouse {
    fn describe(&self) -> String {
        format!("local warehouse {}", self.root.display())
    }

    async fn ensure_table(&self, table: TableSpec) -> Result<(), SinkError> {
        let dir = self.table_dir(table);
        tokio::task::spawn_blocking(move || {
            crate::files::private_dir(&dir).map_err(|e| io_error(&dir, e))
        })
        .await
        .map_err(|e| SinkError::fatal(e.to_string()))?
    }

    async fn write(&self, batch: &RowBatch<'_>) -> Result<WriteOutcome, SinkError> {
        let mut by_day: BTreeMap<NaiveDate, Vec<u8>> = BTreeMap::new();
        for row in batch.rows {
            let file = by_day.entry(row.day).or_default();
            file.extend_from_slice(row.json.as_bytes());
            file.push(b'\n');
        }
        let table_dir = self.table_dir(batch.table);
        let name = format!("{}.ndjson", batch.batch_id);
        // Only a batch written before (a crash, a lost lock) can have left
        // temporary files; others skip the directory scan.
        let sweep = batch.maybe_written;
        tokio::task::spawn_blocking(move || {
            // One file per day; their fsyncs overlap instead of queueing.
            std::thread::scope(|scope| {
                let writers: Vec<_> = by_day
                    .iter()
                    .map(|(day, content)| {
                        let dir = table_dir.join(format!("dt={day}"));
                        let name = &name;
                        scope.spawn(move || write_once(&dir, name, content, sweep))
                    })
                    .collect();
                for writer in writers {
                    writer
                        .join()
                        .map_err(|_| SinkError::fatal("a warehouse writer thread panicked"))??;
                }
                Ok(WriteOutcome::default())
            })
        })
        .await
        .map_err(|e| SinkError::fatal(e.to_string()))?
    }

    async fn freshness(&self, table: TableSpec, window_days: u32) -> Result<Freshness, SinkError> {
        let dir = self.table_dir(table);
        tokio::task::spawn_blocking(move || scan_recent(&dir, table.partition_field, window_days))
            .await
            .map_err(|e| SinkError::fatal(e.to_string()))?
    }
}

/// Reads every file of the day folders within the window.
fn scan_recent(dir: &Path, field: &str, window_days: u32) -> Result<Freshness, SinkError> {
    let now = Utc::now();
    let first_day = (now - chrono::Duration::days(i64::from(window_days))).date_naive();
    let day_ago = now - chrono::Duration::hours(24);
    let mut freshness = Freshness::default();
    let days = match fs::read_dir(dir) {
        Ok(days) => days,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(freshness),
        Err(err) => return Err(io_error(dir, err)),
    };
    let time = |row: &serde_json::Value, name: &str| {
        row.get(name)
            .and_then(|v| v.as_str())
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    for day in days.filter_map(Result::ok) {
        let in_window = day
            .file_name()
            .to_str()
            .and_then(|name| name.strip_prefix("dt="))
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
            .is_some_and(|d| d >= first_day);
        if !in_window {
            continue;
        }
        for file in fs::read_dir(day.path()).map_err(|e| io_error(&day.path(), e))? {
            let path = file.map_err(|e| io_error(&day.path(), e))?.path();
            if path.extension().is_none_or(|ext| ext != "ndjson") {
                continue; // temporary files are not part of the table
            }
            let text = fs::read_to_string(&path).map_err(|e| io_error(&path, e))?;
            for row in text.lines().filter_map(|l| serde_json::from_str(l).ok()) {
                if time(&row, "_ingestion_timestamp").is_some_and(|t| t >= day_ago) {
                    freshness.rows_last_24h += 1;
                }
                freshness.newest_event_at = freshness.newest_event_at.max(time(&row, field));
            }
        }
    }
    Ok(freshness)
}

/// Writes `dir/name` atomically unless it is already there. Every writer
/// has a temporary file of its own, and the rename never replaces a
/// finished file: two writers of one batch (a run that lost its lock and the
/// run that took over) cannot interleave, and the first complete file stays.
fn write_once(dir: &Path, name: &str, content: &[u8], sweep: bool) -> Result<(), SinkError> {
    let target = dir.join(name);
    // A file another writer finished is trusted only once its directory
    // entry is on disk: the caller settles (removes the records) next.
    let durable = || File::open(dir).and_then(|d| d.sync_all());
    if target.exists() {
        return durable().map_err(|e| io_error(&target, e));
    }
    crate::files::private_dir(dir).map_err(|e| io_error(dir, e))?;
    let write = || -> std::io::Result<()> {
        let mut file = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempfile_in(dir)?;
        file.write_all(content)?;
        file.as_file().sync_all()?;
        match file.persist_noclobber(&target) {
            Ok(_) => {}
            // Another writer finished the same batch first (and may have
            // swept our temporary file as a leftover); ours is dropped.
            Err(_) if target.exists() => return durable(),
            Err(err) => return Err(err.error),
        }
        durable()?;
        if sweep {
            remove_leftovers(dir, name);
        }
        Ok(())
    };
    write().map_err(|e| io_error(&target, e))
}

/// Temporary files of `name` that killed writers left behind. Best effort:
/// they are never read (only `.ndjson` files are part of the table).
fn remove_leftovers(dir: &Path, name: &str) {
    let prefix = format!(".{name}.");
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        if file_name.starts_with(&prefix) && file_name.ends_with(".tmp") {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn io_error(path: &Path, err: std::io::Error) -> SinkError {
    // A full or failing disk may recover; let the retry policy decide.
    SinkError::retryable(format!("cannot write {}: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::EventKind;
    use crate::warehouse::rows::to_row;

    #[tokio::test]
    async fn rows_land_in_their_day_and_a_rewrite_adds_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = LocalWarehouse::new(dir.path());
        let table = TableSpec::for_kind(EventKind::Transaction);
        let now = chrono::Utc::now();
        let rows: Vec<_> = [
            "2025-09-27T10:00:00Z",
            "2025-09-27T11:00:00Z",
            "2025-09-28T00:00:01Z",
        ]
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let payload = format!(r#"{{"_timestamp":"{t}","transaction_id":"t{i}"}}"#);
            to_row(EventKind::Transaction, &payload, now).expect("row")
        })
        .collect();
        let ids: Vec<String> = (0..3).map(|i| format!("t{i}")).collect();
        let batch = RowBatch {
            batch_id: "b1",
            table,
            rows: &rows,
            row_ids: &ids,
            ingested_at: now,
            maybe_written: false,
            jobs: &crate::warehouse::Unlimited,
        };
        sink.write(&batch).await.expect("write");
        sink.write(&batch).await.expect("rewrite");
        let day = |d: &str| {
            fs::read_to_string(
                sink.table_dir(table)
                    .join(format!("dt={d}"))
                    .join("b1.ndjson"),
            )
        };
        assert_eq!(day("2025-09-27").expect("day 1").lines().count(), 2);
        assert_eq!(day("2025-09-28").expect("day 2").lines().count(), 1);

        // A crash after the first day's rename: the rewrite completes the second.
        fs::remove_file(sink.table_dir(table).join("dt=2025-09-28/b1.ndjson")).expect("remove");
        sink.write(&batch).await.expect("recovery");
        assert_eq!(day("2025-09-27").expect("day 1").lines().count(), 2);
        assert_eq!(day("2025-09-28").expect("day 2").lines().count(), 1);
    }

    #[test]
    fn a_finished_file_is_never_replaced_and_writers_never_mix() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A writer killed mid-write left its temporary file.
        fs::write(dir.path().join(".b1.ndjson.abc123.tmp"), b"torn").expect("leftover");
        // Many writers of the same file at once, each with different bytes.
        let contents: Vec<Vec<u8>> = (0..8)
            .map(|i| format!("{{\"writer\":{i}}}\n").repeat(10_000).into_bytes())
            .collect();
        std::thread::scope(|scope| {
            for content in &contents {
                let path = dir.path();
                scope.spawn(move || write_once(path, "b1.ndjson", content, true).expect("write"));
            }
        });
        let written = fs::read(dir.path().join("b1.ndjson")).expect("file");
        assert!(contents.contains(&written), "one writer's whole file");
        // A later writer with other bytes leaves it alone.
        write_once(dir.path(), "b1.ndjson", b"late\n", true).expect("late");
        assert_eq!(
            fs::read(dir.path().join("b1.ndjson")).expect("file"),
            written
        );
        let names: Vec<String> = fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        assert_eq!(names, ["b1.ndjson"], "no temporary file left");
    }
}
