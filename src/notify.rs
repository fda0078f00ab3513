//! Upload notifications: a JSON POST to `FLIT_NOTIFY_WEBHOOK_URL` after every
//! upload run that kept something back (status `partial`) or could not start
//! at all (no usable sink, Redis unreachable), and after the first fully
//! successful run that follows such a run. The body carries a
//! Slack-compatible `text` and the run's figures under `flit_cache`.
//!
//! A notification is bounded in time (`FLIT_NOTIFY_TIMEOUT_MS`) and never
//! fails the run: a receiver that is down or slow costs a warning. The URL
//! usually holds a secret (Slack's hook token), so it is never logged: errors
//! are shown without it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use crate::store::run_report::{RunReport, RunStatus, TableReport};
use secrecy::{ExposeSecret, SecretString};

/// Where notifications go and how long one may take.
#[derive(Debug, Clone)]
pub struct NotifySettings {
    pub webhook_url: Option<SecretString>,
    pub timeout: Duration,
}

/// Why a run is worth a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Occasion {
    /// The run kept records back or met errors.
    Failed,
    /// The first fully successful run after one that was not.
    Recovered,
    /// The run could not start: no usable sink, Redis unreachable, a layout
    /// it cannot use. Nothing was uploaded.
    NotStarted,
}

/// Whether a table kept something back in its run (the run is then
/// partial): records left for retry, an error, or the table set aside.
pub fn table_failed(table: &TableReport) -> bool {
    table.kept_for_retry > 0 || !table.errors.is_empty() || table.set_aside.is_some()
}

/// Whether `report` calls for a notification, given the tables of this run
/// whose previous run failed. A busy run did nothing while another run held
/// the lock, which reports for itself; a dry run changed nothing.
pub fn occasion(report: &RunReport, failed_before: &[String]) -> Option<Occasion> {
    if report.dry_run || report.status == RunStatus::Busy {
        return None;
    }
    if report.status == RunStatus::Partial || report.tables.iter().any(table_failed) {
        return Some(Occasion::Failed);
    }
    report
        .tables
        .iter()
        .any(|t| failed_before.contains(&t.table))
        .then_some(Occasion::Recovered)
}

/// The body POSTed for `report`.
pub fn body(report: &RunReport, occasion: Occasion) -> serde_json::Value {
    let uploaded: u64 = report.tables.iter().map(|t| t.rows_uploaded).sum();
    let kept: u64 = report.tables.iter().map(|t| t.kept_for_retry).sum();
    let mut text = match occasion {
        Occasion::Failed => format!(
            ":warning: flit-cache upload run of {} was partial: {uploaded} rows uploaded, {kept} records kept for the next run ({}).",
            report.started_at.format("%Y-%m-%d %H:%M UTC"),
            report.warehouse
        ),
        Occasion::Recovered => format!(
            ":white_check_mark: flit-cache uploads recovered: the run of {} uploaded {uploaded} rows and kept nothing back ({}).",
            report.started_at.format("%Y-%m-%d %H:%M UTC"),
            report.warehouse
        ),
        // A run that did not start has no report; `not_started_body` says it.
        Occasion::NotStarted => String::new(),
    };
    for table in &report.tables {
        if let Some(why) = &table.set_aside {
            text.push_str(&format!("\n• {} set aside: {}", table.table, shorten(why)));
        }
        for error in table.errors.iter().take(3) {
            text.push_str(&format!("\n• {}: {}", table.table, shorten(error)));
        }
    }
    json!({
        "text": text,
        "flit_cache": {
            "occasion": occasion,
            "status": report.status,
            "started_at": report.started_at,
            "finished_at": report.finished_at,
            "rows_uploaded": uploaded,
            "kept_for_retry": kept,
            "tables": report.tables.iter().map(|t| json!({
                "table": t.table,
                "rows_uploaded": t.rows_uploaded,
                "dead_lettered": t.dead_lettered,
                "expired": t.expired,
                "kept_for_retry": t.kept_for_retry,
                "set_aside": t.set_aside.as_deref().map(shorten),
                // A warehouse's whole reply can be long: each error is
                // shortened, and ten are enough to act on.
                "errors": t.errors.iter().take(10).map(|e| shorten(e)).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }
    })
}

/// The body POSTed when a run could not start, with why.
pub fn not_started_body(started_at: DateTime<Utc>, error: &str) -> serde_json::Value {
    json!({
        "text": format!(
            ":x: flit-cache upload run of {} could not start, nothing was uploaded: {}",
            started_at.format("%Y-%m-%d %H:%M UTC"),
            shorten(error)
        ),
        "flit_cache": {
            "occasion": Occasion::NotStarted,
            "started_at": started_at,
            "error": shorten(error),
        }
    })
}

/// Error texts can be long (a warehouse's whole reply); a chat line need not be.
fn shorten(text: &str) -> String {
    const MAX: usize = 300;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Sends the notification `report` calls for, if any and if a webhook is
/// set. Never fails: what goes wrong is logged, without the URL.
pub async fn after_run(settings: &NotifySettings, report: &RunReport, failed_before: &[String]) {
    if let Some(occasion) = occasion(report, failed_before) {
        send(settings, occasion, &body(report, occasion)).await;
    }
}

/// Says that the run of `started_at` could not start, and why, if a webhook
/// is set. Never fails, as `after_run`.
pub async fn run_not_started(settings: &NotifySettings, started_at: DateTime<Utc>, error: &str) {
    let body = not_started_body(started_at, error);
    send(settings, Occasion::NotStarted, &body).await;
}

/// POSTs `body` to the webhook, if one is set, and logs how it went.
async fn send(settings: &NotifySettings, occasion: Occasion, body: &serde_json::Value) {
    let Some(url) = &settings.webhook_url else {
        return;
    };
    match post(url.expose_secret(), settings.timeout, body).await {
        Ok(()) => tracing::info!(?occasion, "upload notification sent"),
        Err(problem) => tracing::warn!(?occasion, %problem,
            "could not send the upload notification (FLIT_NOTIFY_WEBHOOK_URL); the run is not affected"),
    }
}

async fn post(url: &str, timeout: Duration, body: &serde_json::Value) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.without_url().to_string())?;
    let response = client
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the receiver answered HTTP {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::run_report::TableReport;

    fn report(status: RunStatus) -> RunReport {
        let at = chrono::DateTime::from_timestamp(1_780_000_000, 0).expect("time");
        RunReport {
            started_at: at,
            finished_at: at,
            status,
            dry_run: false,
            warehouse: "local warehouse ./warehouse".into(),
            busy: None,
            tables: vec![TableReport {
                table: "flit_ml_raw.raw_bnpl_prediction_logs".into(),
                rows_uploaded: 10,
                kept_for_retry: 5,
                errors: vec!["x".repeat(1000)],
                ..TableReport::default()
            }],
        }
    }

    #[test]
    fn partial_runs_and_the_first_success_of_a_failed_table_are_notified() {
        use RunStatus::*;
        let table = ["flit_ml_raw.raw_bnpl_prediction_logs".to_owned()];
        let ok = |status| {
            let mut r = report(status);
            r.tables[0].kept_for_retry = 0;
            r.tables[0].errors.clear();
            r
        };
        assert_eq!(occasion(&report(Partial), &[]), Some(Occasion::Failed));
        assert_eq!(occasion(&report(Partial), &table), Some(Occasion::Failed));
        assert_eq!(occasion(&ok(Ok), &table), Some(Occasion::Recovered));
        assert_eq!(occasion(&ok(Ok), &[]), None, "a success after a success");
        assert_eq!(
            occasion(&ok(Ok), &["flit_bnpl_raw.raw_bnpl_txs_json".to_owned()]),
            None,
            "another table's failure is not this run's to clear"
        );
        assert_eq!(occasion(&report(Busy), &table), None);
        let mut dry = report(Partial);
        dry.dry_run = true;
        assert_eq!(occasion(&dry, &[]), None);
    }

    #[test]
    fn the_body_has_a_short_text_and_the_figures() {
        let body = body(&report(RunStatus::Partial), Occasion::Failed);
        let text = body["text"].as_str().expect("text");
        assert!(text.contains("10 rows uploaded, 5 records kept"), "{text}");
        assert!(text.len() < 700, "errors are shortened: {}", text.len());
        assert_eq!(body["flit_cache"]["kept_for_retry"], 5);
        assert_eq!(body["flit_cache"]["occasion"], "failed");
    }
}
