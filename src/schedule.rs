//! The upload schedule inside `run`: an upload on every tick of
//! `FLIT_UPLOAD_CRON` (UTC, seconds first; default 02:00), and one at start
//! when the last successful upload is older than the last scheduled time
//! (the service was down when it should have run). A Redis with no upload
//! history gets no catch-up: there is nothing to say a run was missed.
//!
//! Ticks only signal the uploader task; runs never overlap in one process,
//! missed ticks while a run lasts collapse into one, and the upload lock
//! keeps other processes out.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use tokio::sync::mpsc;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;

use crate::configuration::Settings;
use crate::store::{Role, reports};
use crate::upload::{self, RunStatus, UploadOptions};
use crate::warehouse;

/// Parses a cron expression the way the scheduler does (seconds first).
pub fn parse(text: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(text)
        .map_err(|e| e.to_string())
}

/// Whether a scheduled time passed between the last success and `now`.
pub fn missed_a_run(cron: &Cron, last_success: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    match cron.find_previous_occurrence(&now, false) {
        Ok(previous) => previous > last_success,
        Err(_) => false,
    }
}

/// Runs scheduled uploads until `shutdown`; an upload in progress stops between batches.
pub async fn run_scheduled_uploads(
    settings: Arc<Settings>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let cron_text = settings.warehouse.upload_cron.clone();
    let cron = parse(&cron_text).map_err(|e| anyhow::anyhow!("FLIT_UPLOAD_CRON: {e}"))?;
    let (tick, mut ticks) = mpsc::channel::<&'static str>(1);

    let mut scheduler = JobScheduler::new().await?;
    let scheduled = tick.clone();
    scheduler
        .add(Job::new_async(cron_text.as_str(), move |_, _| {
            let scheduled = scheduled.clone();
            Box::pin(async move {
                // A full channel means a run is already due: the ticks merge.
                let _ = scheduled.try_send("schedule");
            })
        })?)
        .await?;
    scheduler.start().await?;
    tracing::info!(cron = %cron_text, "upload schedule started (UTC)");

    if catch_up_due(&settings, &cron).await {
        let _ = tick.try_send("catch-up");
    }

    loop {
        let reason = tokio::select! {
            reason = ticks.recv() => reason.unwrap_or("schedule"),
            _ = shutdown.cancelled() => break,
        };
        tracing::info!(reason, "upload run starting");
        let options = UploadOptions {
            stop: Some(shutdown.clone()),
            ..UploadOptions::default()
        };
        let result = match warehouse::configured(&settings).await {
            Ok(sink) => upload::run_once(&settings, &sink, options).await,
            Err(err) => Err(err),
        };
        match result {
            Ok(report) if report.status == RunStatus::Busy => {
                tracing::info!("another process is uploading; this tick is skipped")
            }
            Ok(report) => {
                let rows: u64 = report.tables.iter().map(|t| t.rows_uploaded).sum();
                let kept: u64 = report.tables.iter().map(|t| t.kept_for_retry).sum();
                tracing::info!(status = ?report.status, rows, kept, "upload run finished")
            }
            Err(err) => tracing::error!(error = %format!("{err:#}"), "upload run could not start"),
        }
    }
    scheduler.shutdown().await?;
    Ok(())
}

async fn catch_up_due(settings: &Settings, cron: &Cron) -> bool {
    let last: anyhow::Result<Option<DateTime<Utc>>> = async {
        let mut conn = settings
            .redis
            .open(Role::Monitor, settings.redis.db_transactions)
            .await?;
        Ok(reports::last_success(&mut conn).await?)
    }
    .await;
    let last = match last {
        Ok(last) => last,
        Err(err) => {
            tracing::warn!(error = %format!("{err:#}"), "cannot read the upload history; no catch-up check");
            None
        }
    };
    match last {
        Some(last) if missed_a_run(cron, last, Utc::now()) => {
            tracing::info!(last_success = %last, "the last scheduled upload was missed; catching up now");
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    #[test]
    fn a_run_is_missed_only_when_a_scheduled_time_passed_since_the_last_success() {
        let daily = parse("0 0 2 * * *").expect("valid");
        // Succeeded at 02:00:05 today, now 14:00: nothing missed.
        assert!(!missed_a_run(
            &daily,
            at("2026-11-23T02:00:05Z"),
            at("2026-11-23T14:00:00Z")
        ));
        // Last success yesterday 02:00:05, now 03:00 today: today's 02:00 was missed.
        assert!(missed_a_run(
            &daily,
            at("2026-11-22T02:00:05Z"),
            at("2026-11-23T03:00:00Z")
        ));
        // Down for three days.
        assert!(missed_a_run(
            &daily,
            at("2026-11-20T02:00:05Z"),
            at("2026-11-23T01:00:00Z")
        ));
    }

    #[test]
    fn five_field_and_nonsense_expressions_are_refused() {
        assert!(parse("0 2 * * *").is_err());
        assert!(parse("every day").is_err());
        assert!(parse("*/10 * * * * *").is_ok());
    }
}
