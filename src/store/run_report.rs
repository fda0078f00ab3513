//! The report of one upload run: what each table received, what was
//! dead-lettered, expired or kept back, and the errors. It is printed by
//! `batch-upload`, and kept in Redis (last run and a capped history) for the
//! monitor and for the schedule's catch-up.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::keys::EventKind;

/// Reports kept in the history.
pub const HISTORY_LENGTH: isize = 100;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableReport {
    pub kind: Option<EventKind>,
    pub table: String,
    pub rows_uploaded: u64,
    pub dead_lettered: u64,
    /// Queue entries whose record expired before it could be uploaded.
    pub expired: u64,
    /// Records still queued because the warehouse did not take them; the next run retries.
    pub kept_for_retry: u64,
    pub batches: u64,
    /// Write attempts, retries included.
    pub attempts: u64,
    /// Batches the warehouse did not take in this run, parked for a later one.
    #[serde(default)]
    pub batches_parked: u64,
    /// Parked batches waiting after the run.
    #[serde(default)]
    pub parked_waiting: u64,
    /// Why the table was set aside until the next run (a quota, the day's
    /// load-job budget, credentials), if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_aside: Option<String>,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Everything queued at the start was settled.
    Ok,
    /// Some records are kept for a later run.
    Partial,
    /// Another run holds the upload lock; nothing was done (`busy` says who).
    Busy,
}

/// The lock that made a run `Busy`: whose it is, and for how long.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BusyLock {
    pub kind: EventKind,
    pub holder: String,
    pub expires_in_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunReport {
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub status: RunStatus,
    pub dry_run: bool,
    pub warehouse: String,
    /// Set when the status is `Busy`; such a run has no tables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy: Option<BusyLock>,
    pub tables: Vec<TableReport>,
}

impl RunReport {
    pub fn exit_code(&self) -> u8 {
        match self.status {
            RunStatus::Ok => 0,
            RunStatus::Partial | RunStatus::Busy => 1,
        }
    }

    /// A table a person can scan.
    pub fn to_text(&self) -> String {
        let seconds = (self.finished_at - self.started_at).num_milliseconds() as f64 / 1000.0;
        let mut out = format!(
            "upload run {}{}: {:?} in {seconds:.2} s to {}\n",
            self.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
            if self.dry_run {
                " (dry run: nothing changed)"
            } else {
                ""
            },
            self.status,
            self.warehouse
        );
        if let Some(busy) = &self.busy {
            out.push_str(&format!(
                "another upload run holds the lock of {} ({}, expires in {} s); nothing was done, try again later\n",
                busy.kind,
                busy.holder,
                busy.expires_in_ms.max(0) / 1000
            ));
            return out;
        }
        out.push_str(&format!(
            "{:<42} {:>10} {:>13} {:>8} {:>8} {:>8} {:>8}\n",
            "table", "uploaded", "dead-letter", "expired", "kept", "batches", "attempts"
        ));
        for t in &self.tables {
            out.push_str(&format!(
                "{:<42} {:>10} {:>13} {:>8} {:>8} {:>8} {:>8}\n",
                t.table,
                t.rows_uploaded,
                t.dead_lettered,
                t.expired,
                t.kept_for_retry,
                t.batches,
                t.attempts
            ));
            if t.parked_waiting > 0 {
                out.push_str(&format!(
                    "  {} parked batches wait for a later run ({} parked in this one)\n",
                    t.parked_waiting, t.batches_parked
                ));
            }
            if let Some(why) = &t.set_aside {
                out.push_str(&format!("  set aside until the next run: {why}\n"));
            }
            for error in &t.errors {
                out.push_str(&format!("  error: {error}\n"));
            }
        }
        out
    }
}
