//! The upload schedule: `FLIT_UPLOAD_CRON` (UTC, seconds first; default
//! 02:00) as an `UploadSchedule`, and the ticker inside `run` that turns it
//! into upload runs, with one at start when the last successful upload is
//! older than the last scheduled time (the service was down when it should
//! have run). A Redis with no upload history gets no catch-up: there is
//! nothing to say a run was missed.
//!
//! Ticks only signal the one task that runs uploads; runs never overlap in
//! one process, missed ticks while a run lasts collapse into one, and the
//! upload lock keeps other processes out. What a run does is the caller's
//! (startup), so this module knows nothing of settings, Redis or sinks.

use std::future::Future;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use tokio::sync::mpsc;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;

/// When scheduled uploads run: a cron expression with seconds first, in UTC.
#[derive(Debug, Clone)]
pub struct UploadSchedule {
    text: String,
    cron: Cron,
}

impl FromStr for UploadSchedule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .dom_and_dow(true)
            .build()
            .parse(text)
            .map_err(|e| e.to_string())?;
        Ok(UploadSchedule {
            text: text.to_owned(),
            cron,
        })
    }
}

impl UploadSchedule {
    /// The expression as configured.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether a scheduled time passed between the last success and `now`.
    pub fn missed_a_run(&self, last_success: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        match self.cron.find_previous_occurrence(&now, false) {
            Ok(previous) => previous > last_success,
            Err(_) => false,
        }
    }

    /// Calls `upload` with the reason ("catch-up", "schedule") on every tick
    /// until `shutdown`, and once more at start when `catch_up` (awaited
    /// once the ticks are running, so none is missed while it reads) says
    /// a run was missed. An upload in progress is the caller's to stop
    /// (between batches) on `shutdown`.
    pub async fn drive<C, F, Fut>(
        &self,
        catch_up: C,
        shutdown: CancellationToken,
        mut upload: F,
    ) -> anyhow::Result<()>
    where
        C: Future<Output = bool>,
        F: FnMut(&'static str) -> Fut,
        Fut: Future<Output = ()>,
    {
        let (tick, mut ticks) = mpsc::channel::<&'static str>(1);
        let mut scheduler = JobScheduler::new().await?;
        let scheduled = tick.clone();
        scheduler
            .add(Job::new_async(self.text.as_str(), move |_, _| {
                let scheduled = scheduled.clone();
                Box::pin(async move {
                    // A full channel means a run is already due: the ticks merge.
                    let _ = scheduled.try_send("schedule");
                })
            })?)
            .await?;
        scheduler.start().await?;
        tracing::info!(cron = %self.text, "upload schedule started (UTC)");
        if catch_up.await {
            let _ = tick.try_send("catch-up");
        }
        loop {
            let reason = tokio::select! {
                reason = ticks.recv() => reason.unwrap_or("schedule"),
                _ = shutdown.cancelled() => break,
            };
            upload(reason).await;
        }
        scheduler.shutdown().await?;
        Ok(())
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
        let daily: UploadSchedule = "0 0 2 * * *".parse().expect("valid");
        // Succeeded at 02:00:05 today, now 14:00: nothing missed.
        assert!(!daily.missed_a_run(at("2026-11-23T02:00:05Z"), at("2026-11-23T14:00:00Z")));
        // Last success yesterday 02:00:05, now 03:00 today: today's 02:00 was missed.
        assert!(daily.missed_a_run(at("2026-11-22T02:00:05Z"), at("2026-11-23T03:00:00Z")));
        // Down for three days.
        assert!(daily.missed_a_run(at("2026-11-20T02:00:05Z"), at("2026-11-23T01:00:00Z")));
    }

    #[test]
    fn five_field_and_nonsense_expressions_are_refused() {
        assert!(UploadSchedule::from_str("0 2 * * *").is_err());
        assert!(UploadSchedule::from_str("every day").is_err());
        assert!(UploadSchedule::from_str("*/10 * * * * *").is_ok());
    }
}
