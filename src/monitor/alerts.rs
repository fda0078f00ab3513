//! The monitor's judgement: each check compares one measured value with its
//! threshold and, past it, says what is wrong, the value, the threshold and
//! what to do. Pure functions of the report, so every rule is unit tested.

use serde::Serialize;

use super::MonitorSettings;
use super::{KindHealth, MonitorReport, ServerFacts, TableFreshness};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// Stable identifier, for scripts and alert routing.
    pub code: &'static str,
    pub what: String,
    pub value: String,
    pub threshold: String,
    pub action: String,
}

fn alert(
    code: &'static str,
    what: impl Into<String>,
    value: impl Into<String>,
    threshold: impl Into<String>,
    action: impl Into<String>,
) -> Alert {
    Alert {
        code,
        what: what.into(),
        value: value.into(),
        threshold: threshold.into(),
        action: action.into(),
    }
}

const MIB: u64 = 1024 * 1024;
/// A queued record with less time than this left will likely expire first.
const EXPIRY_MARGIN_SECONDS: i64 = 24 * 3_600;

pub fn evaluate(report: &MonitorReport, limits: &MonitorSettings) -> Vec<Alert> {
    let mut alerts = Vec::new();
    let Some(server) = &report.redis.server else {
        alerts.push(alert(
            "redis_unreachable",
            "Redis does not answer",
            report.redis.error.clone().unwrap_or_default(),
            "reachable",
            "check REDIS_URL and that Redis runs; producers spool to disk meanwhile",
        ));
        return alerts;
    };

    server_alerts(report, server, limits, &mut alerts);
    for kind in &report.kinds {
        kind_alerts(kind, report.generated_at, limits, &mut alerts);
    }
    dead_letter_memory_alerts(report, server, &mut alerts);
    upload_alerts(report, limits, &mut alerts);
    if let Some(tables) = &report.warehouse {
        for table in tables {
            warehouse_alerts(table, limits, &mut alerts);
        }
    }
    alerts
}

/// The server's own state: eviction, persistence, memory now and projected.
fn server_alerts(
    report: &MonitorReport,
    server: &ServerFacts,
    limits: &MonitorSettings,
    alerts: &mut Vec<Alert>,
) {
    if server.may_evict() {
        alerts.push(alert(
            "eviction_policy",
            "Redis may evict records that are not uploaded yet (every record has a TTL, so volatile-* policies evict them too)",
            format!("maxmemory-policy {}", server.maxmemory_policy),
            "noeviction",
            "CONFIG SET maxmemory-policy noeviction, and set it in redis.conf",
        ));
    }
    if server.evicted_keys > 0 {
        alerts.push(alert(
            "keys_evicted",
            "Redis has evicted keys since it started: records may have been lost",
            format!("{} keys", server.evicted_keys),
            "0",
            "set maxmemory-policy noeviction; compare warehouse counts with what producers sent",
        ));
    }
    if server.persistence_off() == Some(true) {
        alerts.push(alert(
            "persistence_off",
            "Redis keeps nothing on disk: a restart loses every record not uploaded",
            "appendonly no, save \"\"",
            "AOF or RDB on",
            "CONFIG SET appendonly yes (appendfsync everysec), and set it in redis.conf",
        ));
    }
    if !server.persistence_errors.is_empty() {
        alerts.push(alert(
            "persistence_failing",
            "Redis reports failed writes to disk",
            server.persistence_errors.join(", "),
            "ok",
            "check the Redis log and free disk space",
        ));
    }
    let memory_limit = limits.alert_memory_mb * MIB;
    if server.used_memory_bytes > memory_limit {
        alerts.push(alert(
            "memory_high",
            "Redis memory use is above the alert threshold",
            format!("{:.1} MiB", server.used_memory_bytes as f64 / MIB as f64),
            format!("{} MiB (FLIT_ALERT_MEMORY_MB)", limits.alert_memory_mb),
            "run batch-upload to drain the queues, or give Redis more memory",
        ));
    }
    if server.maxmemory_bytes > 0 && server.used_memory_bytes * 10 > server.maxmemory_bytes * 9 {
        alerts.push(alert(
            "memory_near_limit",
            "Redis is near maxmemory: new events will be refused and spooled by producers",
            format!("{:.1} MiB", server.used_memory_bytes as f64 / MIB as f64),
            format!(
                "90% of maxmemory {:.1} MiB",
                server.maxmemory_bytes as f64 / MIB as f64
            ),
            "run batch-upload now, or raise maxmemory",
        ));
    }

    if let Some(projected) = report.projected_memory_bytes
        && server.maxmemory_bytes > 0
        && projected * 10 > server.maxmemory_bytes * 9
    {
        alerts.push(alert(
            "memory_projected",
            "records kept for their whole TTL will not fit: at the last 24 hours' volume, Redis reaches maxmemory before the oldest expire",
            format!("{:.1} MiB projected", projected as f64 / MIB as f64),
            format!(
                "90% of maxmemory {:.1} MiB, where uploads stop keeping",
                server.maxmemory_bytes as f64 / MIB as f64
            ),
            "raise maxmemory (README: memory per daily volume), shorten REDIS_TTL_SECONDS, or set FLIT_KEEP_UPLOADED=false",
        ));
    }
}

/// Dead letters taking a large share of maxmemory, all kinds together.
fn dead_letter_memory_alerts(
    report: &MonitorReport,
    server: &ServerFacts,
    alerts: &mut Vec<Alert>,
) {
    let dead_letter_bytes: u64 = report
        .kinds
        .iter()
        .filter_map(|k| k.stream.as_ref())
        .map(|s| s.dead_letter_bytes)
        .sum();
    if server.maxmemory_bytes > 0 && dead_letter_bytes * 10 > server.maxmemory_bytes {
        alerts.push(alert(
            "dead_letters_memory",
            "dead letters take a large share of Redis memory (a flood of refused events?)",
            format!("{:.1} MiB", dead_letter_bytes as f64 / MIB as f64),
            format!(
                "10% of maxmemory {:.1} MiB",
                server.maxmemory_bytes as f64 / MIB as f64
            ),
            "find the producer with flit-cache dead-letter list; lower FLIT_DEAD_LETTER_MAXLEN or FLIT_DEAD_LETTER_KEEP_BYTES to keep fewer",
        ));
    }
}

fn kind_alerts(
    kind: &KindHealth,
    now: chrono::DateTime<chrono::Utc>,
    limits: &MonitorSettings,
    alerts: &mut Vec<Alert>,
) {
    let name = kind.kind.name();
    if let Some(queue) = &kind.queue {
        upload_batch_alerts(name, queue, now, limits, alerts);
        if queue.length > limits.alert_queue {
            alerts.push(alert(
                "queue_long",
                format!("the {name} upload queue is long"),
                format!("{} records", queue.length),
                format!("{} (FLIT_ALERT_QUEUE)", limits.alert_queue),
                "run flit-cache batch-upload; check that the scheduled upload succeeds",
            ));
        }
        match queue.oldest_expires_in_seconds {
            Some(left) if left < 0 => alerts.push(alert(
                "queued_record_expired",
                format!("the oldest queued {name} record expired before upload"),
                queue.oldest_key.clone().unwrap_or_default(),
                "uploaded before its TTL ends",
                "run batch-upload more often, or raise REDIS_TTL_SECONDS",
            )),
            Some(left) if left < EXPIRY_MARGIN_SECONDS => alerts.push(alert(
                "queued_record_expiring",
                format!("the oldest queued {name} record expires soon"),
                format!("{:.1} h left", left as f64 / 3_600.0),
                "24 h",
                "run flit-cache batch-upload now",
            )),
            _ => {}
        }
    }
    if let Some(stream) = &kind.stream {
        stream_alerts(kind, stream, limits, alerts);
    }
    if let Some(lookups) = &kind.lookups
        && let Some(rate) = lookups.hit_rate
        && lookups.last_hour() >= limits.alert_hit_rate_min_lookups
        && rate < limits.alert_hit_rate
    {
        alerts.push(alert(
            "hit_rate_low",
            format!("{name} lookups often miss: callers do not find records they expect in Redis"),
            format!(
                "{:.1}% of {} lookups in the last hour",
                rate * 100.0,
                lookups.last_hour()
            ),
            format!(
                "{:.0}% (FLIT_ALERT_HIT_RATE), from {} lookups an hour (FLIT_ALERT_HIT_RATE_MIN_LOOKUPS)",
                limits.alert_hit_rate * 100.0,
                limits.alert_hit_rate_min_lookups
            ),
            "check that producers reach Redis (spooled events are not cached yet: flit-cache monitor's spool size), that the workers keep up (stream lag), and that FLIT_KEEP_UPLOADED is on",
        ));
    }
}

/// Batches in flight and parked: nothing may wait unseen.
fn upload_batch_alerts(
    name: &str,
    queue: &super::QueueState,
    now: chrono::DateTime<chrono::Utc>,
    limits: &MonitorSettings,
    alerts: &mut Vec<Alert>,
) {
    let limit =
        chrono::TimeDelta::from_std(limits.alert_in_flight_age).unwrap_or(chrono::TimeDelta::MAX);
    if let Some(since) = queue.in_flight_since
        && now - since > limit
    {
        alerts.push(alert(
            "batch_in_flight_old",
            format!("a {name} batch has been in flight for too long: its upload run died or hangs"),
            format!("{:.1} h since {}", (now - since).num_minutes() as f64 / 60.0, since.to_rfc3339()),
            format!("{} min (FLIT_ALERT_IN_FLIGHT_MINUTES)", limit.num_minutes()),
            "run flit-cache batch-upload: it finishes the batch first; if one is running, read its log",
        ));
    }
    if let Some(expires) = queue.parked_expires_at
        && (expires - now).num_seconds() < EXPIRY_MARGIN_SECONDS
    {
        alerts.push(alert(
            "parked_batch_expiring",
            format!("records of a parked {name} batch expire soon, before any upload took them"),
            format!("{:.1} h left", (expires - now).num_minutes() as f64 / 60.0),
            "24 h",
            "fix what the batch's last error says, then run flit-cache batch-upload (a failed run renews the TTLs)",
        ));
    }
    if let Some(worst) = queue
        .parked
        .iter()
        .filter(|p| p.failures >= limits.alert_batch_failures)
        .max_by_key(|p| p.failures)
    {
        alerts.push(alert(
            "batch_failures_repeating",
            format!("a parked {name} batch keeps failing, run after run"),
            format!(
                "batch {} failed in {} runs: {}",
                worst.batch_id,
                worst.failures,
                worst.last_error.as_deref().unwrap_or("no error kept")
            ),
            format!("{} runs (FLIT_ALERT_BATCH_FAILURES)", limits.alert_batch_failures),
            "read the error; the batch is retried first by every run and the queue behind it goes on",
        ));
    }
}

/// A stream id ahead of the clock by more than this is no clock jitter.
const ID_AHEAD_TOLERANCE_MS: i64 = 1_000;

fn stream_alerts(
    kind: &KindHealth,
    stream: &super::StreamState,
    limits: &MonitorSettings,
    alerts: &mut Vec<Alert>,
) {
    let name = kind.kind.name();
    if let Some(ahead) = stream
        .last_id_ahead_ms
        .filter(|ms| *ms > ID_AHEAD_TOLERANCE_MS)
    {
        alerts.push(alert(
            "stream_id_in_future",
            format!(
                "the last id of {} is ahead of the Redis clock (a producer chose it): every later XADD * gets an id after it, and an exhausted id makes XADD * fail",
                kind.kind.stream()
            ),
            format!(
                "{} ({:.1} h ahead)",
                stream.last_generated_id.clone().unwrap_or_default(),
                ahead as f64 / 3_600_000.0
            ),
            "not ahead of the clock",
            "arrival stamps are safe (the workers stamp with the Redis clock); to reset the ids follow README, \"A stream id in the future\"",
        ));
    }
    if let Some(deleted) = &stream.deleted_before_read {
        alerts.push(alert(
            "stream_deleted_before_read",
            format!(
                "entries of {} were deleted before flit-cache read them (XDEL, or XADD with MAXLEN/MINID, by a client): those events are lost",
                kind.kind.stream()
            ),
            format!("deleted up to {deleted}"),
            "no entry deleted before the group's last delivered id",
            "find the client (Redis's ACL LOG or MONITOR); producers send XADD without MAXLEN, MINID or an id, and only as flit-producer",
        ));
    }
    if stream.dead_letters_last_hour > limits.alert_dead_letters_per_hour {
        alerts.push(alert(
            "dead_letters_recent",
            format!("{name} events are being refused at the door"),
            format!(
                "{}{} dead letters in the last hour",
                stream.dead_letters_last_hour,
                if stream.dead_letters_last_hour > limits.alert_dead_letters_per_hour { "+" } else { "" }
            ),
            format!(
                "{} per hour (FLIT_ALERT_DEAD_LETTERS_PER_HOUR)",
                limits.alert_dead_letters_per_hour
            ),
            format!("see why with flit-cache dead-letter list {name}; after a fix, flit-cache dead-letter redrive {name}"),
        ));
    }
    if let Some(lag) = stream.lag
        && lag > limits.alert_queue
    {
        alerts.push(alert(
            "stream_lag",
            format!("workers are behind on stream {}", kind.kind.stream()),
            format!("{lag} entries not yet read"),
            format!("{} (FLIT_ALERT_QUEUE)", limits.alert_queue),
            "check that flit-cache run is up; add workers with FLIT_WORKERS",
        ));
    }
}

fn upload_alerts(report: &MonitorReport, limits: &MonitorSettings, alerts: &mut Vec<Alert>) {
    let Some(uploads) = &report.uploads else {
        return;
    };
    let limit_hours = limits.alert_upload_age.as_secs() / 3_600;
    match uploads.last_success_at {
        Some(at) => {
            let age = report.generated_at - at;
            if age.to_std().unwrap_or_default() > limits.alert_upload_age {
                alerts.push(alert(
                    "upload_stale",
                    "no successful upload run for too long",
                    format!(
                        "{:.1} h since {}",
                        age.num_minutes() as f64 / 60.0,
                        at.to_rfc3339()
                    ),
                    format!("{limit_hours} h (FLIT_ALERT_UPLOAD_AGE_HOURS)"),
                    "run flit-cache batch-upload and read its errors; check the schedule or cron",
                ));
            }
        }
        None if uploads.recent_runs > 0 => alerts.push(alert(
            "upload_stale",
            "no upload run has succeeded yet",
            format!("{} runs, none complete", uploads.recent_runs),
            "one successful run",
            "run flit-cache batch-upload and read its errors",
        )),
        None => {
            // Never ran: only a problem once queued records are older than the limit.
            let oldest = report
                .kinds
                .iter()
                .filter_map(|k| k.queue.as_ref()?.oldest_age_seconds)
                .max();
            if let Some(age) = oldest.filter(|age| *age > limits.alert_upload_age.as_secs()) {
                alerts.push(alert(
                    "upload_stale",
                    "no upload run yet, and records have waited too long",
                    format!("{:.1} h", age as f64 / 3_600.0),
                    format!("{limit_hours} h (FLIT_ALERT_UPLOAD_AGE_HOURS)"),
                    "run flit-cache batch-upload; check that the schedule or cron is set up",
                ));
            }
        }
    }
    if let Some(rate) = uploads.failure_rate()
        && rate > limits.alert_failure_rate
    {
        alerts.push(alert(
            "upload_failures",
            "upload runs keep records back",
            format!(
                "{:.0}% ({} of the last {} runs)",
                rate * 100.0,
                uploads.recent_failures,
                uploads.recent_runs
            ),
            format!(
                "{:.0}% (FLIT_ALERT_FAILURE_RATE)",
                limits.alert_failure_rate * 100.0
            ),
            "read the errors of the last run (flit-cache monitor --json, last_run); fix credentials or quotas",
        ));
    }
    for table in uploads
        .last_run
        .iter()
        .flat_map(|run| &run.tables)
        .filter(|t| t.set_aside.is_some())
    {
        alerts.push(alert(
            "table_set_aside",
            format!("{} was set aside in the last upload run: its batches wait for the next one", table.table),
            table.set_aside.clone().unwrap_or_default(),
            "not set aside",
            "a quota or the day's load-job budget: wait for tomorrow or raise it (FLIT_LOAD_JOBS_PER_DAY); credentials or permissions: fix them",
        ));
    }
    if uploads.expired_in_history > 0 {
        alerts.push(alert(
            "records_expired",
            "records expired in Redis before they were uploaded: they are lost to the warehouse",
            format!(
                "{} records since {}",
                uploads.expired_in_history,
                uploads
                    .history_since
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default()
            ),
            "0",
            "upload at least daily; raise REDIS_TTL_SECONDS if uploads can pause for days",
        ));
    }
}

fn warehouse_alerts(table: &TableFreshness, limits: &MonitorSettings, alerts: &mut Vec<Alert>) {
    if let Some(error) = &table.error {
        alerts.push(alert(
            "warehouse_unreachable",
            format!("cannot read {}", table.table),
            error.clone(),
            "readable",
            "check BIGQUERY_PROJECT, credentials and BIGQUERY_API_URL",
        ));
        return;
    }
    let limit =
        chrono::Duration::from_std(limits.alert_upload_age).unwrap_or(chrono::Duration::MAX);
    let stale = match table.newest_event_age_hours {
        Some(hours) => hours * 3_600.0 > limit.num_seconds() as f64,
        None => true,
    };
    if stale {
        alerts.push(alert(
            "warehouse_stale",
            format!("{} has no recent events", table.table),
            match table.newest_event_age_hours {
                Some(hours) => format!("newest event {hours:.1} h old"),
                None => "no events in the partitions read".to_owned(),
            },
            format!(
                "{} h (FLIT_ALERT_UPLOAD_AGE_HOURS)",
                limits.alert_upload_age.as_secs() / 3_600
            ),
            "check that uploads run and succeed, and that producers send events",
        ));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use chrono::Utc;

    use super::*;
    use crate::keys::EventKind;
    use crate::monitor::{QueueState, RedisHealth, ServerFacts, UploadState};

    fn limits() -> MonitorSettings {
        MonitorSettings {
            alert_memory_mb: 400,
            alert_queue: 10_000,
            alert_upload_age: Duration::from_secs(26 * 3_600),
            alert_failure_rate: 0.05,
            alert_dead_letters_per_hour: 100,
            alert_in_flight_age: Duration::from_secs(7_200),
            alert_batch_failures: 3,
            alert_hit_rate: 0.8,
            alert_hit_rate_min_lookups: 100,
            warehouse_check_interval: None,
        }
    }

    fn healthy() -> MonitorReport {
        let now = Utc::now();
        MonitorReport {
            generated_at: now,
            healthy: true,
            redis: RedisHealth {
                url: "redis://127.0.0.1:6379".into(),
                reachable: true,
                error: None,
                server: Some(ServerFacts {
                    latency_ms: 0.1,
                    version: "7.2.0".into(),
                    used_memory_bytes: 10 * MIB,
                    maxmemory_bytes: 0,
                    maxmemory_policy: "noeviction".into(),
                    connected_clients: 3,
                    aof_enabled: true,
                    rdb_save: Some(String::new()),
                    persistence_errors: vec![],
                    evicted_keys: 0,
                    keys_per_db: BTreeMap::new(),
                }),
            },
            kinds: vec![KindHealth {
                kind: EventKind::Prediction,
                db: 1,
                queue: Some(QueueState {
                    length: 10,
                    in_flight: 0,
                    in_flight_since: None,
                    oldest_key: Some("pred:p".into()),
                    oldest_expires_in_seconds: Some(6 * 86_400),
                    oldest_age_seconds: Some(86_400),
                    parked: vec![],
                    parked_expires_at: None,
                }),
                stream: None,
                lookups: None,
                volume: None,
                errors: vec![],
            }],
            uploads: Some(UploadState {
                last_success_at: Some(now - chrono::Duration::hours(3)),
                last_run: None,
                recent_runs: 5,
                recent_failures: 0,
                expired_in_history: 0,
                history_since: Some(now - chrono::Duration::days(5)),
                unreadable_reports: 0,
            }),
            spool_bytes: 0,
            projected_memory_bytes: Some(50 * MIB),
            warehouse: None,
            alerts: vec![],
        }
    }

    fn codes(report: &MonitorReport) -> Vec<&'static str> {
        evaluate(report, &limits()).iter().map(|a| a.code).collect()
    }

    #[test]
    fn a_healthy_report_raises_nothing() {
        assert!(codes(&healthy()).is_empty());
    }

    #[test]
    fn records_kept_for_their_ttl_that_would_not_fit_raise_an_alert() {
        let mut report = healthy();
        let server = report.redis.server.as_mut().expect("server");
        server.maxmemory_bytes = 60 * MIB;
        assert!(codes(&report).is_empty(), "50 MiB projected fits in 54");
        report.projected_memory_bytes = Some(55 * MIB);
        assert_eq!(codes(&report), ["memory_projected"]);
        // No maxmemory set, or records removed at upload: nothing to judge.
        report.projected_memory_bytes = None;
        assert!(codes(&report).is_empty());
    }

    #[test]
    fn memory_above_the_threshold_or_near_maxmemory() {
        let mut report = healthy();
        let server = report.redis.server.as_mut().expect("server");
        server.used_memory_bytes = 401 * MIB;
        assert_eq!(codes(&report), ["memory_high"]);
        let server = report.redis.server.as_mut().expect("server");
        server.used_memory_bytes = 95 * MIB;
        server.maxmemory_bytes = 100 * MIB;
        assert_eq!(codes(&report), ["memory_near_limit"]);
    }

    #[test]
    fn stream_ids_ahead_of_the_clock_and_dead_letters() {
        let mut report = healthy();
        report.kinds[0].stream = Some(crate::monitor::StreamState {
            last_id_ahead_ms: Some(500),
            dead_letters_last_hour: 100,
            ..Default::default()
        });
        assert!(
            codes(&report).is_empty(),
            "within the tolerance and threshold"
        );
        let stream = report.kinds[0].stream.as_mut().expect("stream");
        stream.last_id_ahead_ms = Some(3_600_000);
        stream.dead_letters_last_hour = 101;
        stream.dead_letter_bytes = 20 * MIB;
        stream.deleted_before_read = Some("1700000000000-3".into());
        report
            .redis
            .server
            .as_mut()
            .expect("server")
            .maxmemory_bytes = 100 * MIB;
        assert_eq!(
            codes(&report),
            [
                "stream_id_in_future",
                "stream_deleted_before_read",
                "dead_letters_recent",
                "dead_letters_memory"
            ]
        );
    }

    #[test]
    fn batches_in_flight_too_long_parked_and_failing_and_tables_set_aside() {
        let mut report = healthy();
        let now = report.generated_at;
        let queue = report.kinds[0].queue.as_mut().expect("queue");
        queue.in_flight_since = Some(now - chrono::Duration::minutes(30));
        assert!(codes(&report).is_empty());
        let queue = report.kinds[0].queue.as_mut().expect("queue");
        queue.in_flight_since = Some(now - chrono::Duration::hours(3));
        queue.parked_expires_at = Some(now + chrono::Duration::hours(5));
        let summary = crate::upload::ParkedSummary {
            batch_id: "b".into(),
            records: 10,
            failures: 3,
            last_error: Some("backendError".into()),
            parked_at: now,
            renewed_at: now,
        };
        queue.parked = vec![summary];
        let mut last_run = crate::upload::RunReport {
            started_at: now,
            finished_at: now,
            status: crate::upload::RunStatus::Partial,
            dry_run: false,
            warehouse: "w".into(),
            busy: None,
            tables: vec![crate::upload::TableReport {
                table: "t".into(),
                set_aside: Some("quotaExceeded".into()),
                ..Default::default()
            }],
        };
        report.uploads.as_mut().expect("uploads").last_run = Some(last_run.clone());
        assert_eq!(
            codes(&report),
            [
                "batch_in_flight_old",
                "parked_batch_expiring",
                "batch_failures_repeating",
                "table_set_aside"
            ]
        );
        last_run.tables[0].set_aside = None;
        report.uploads.as_mut().expect("uploads").last_run = Some(last_run);
        report.kinds[0].queue.as_mut().expect("queue").parked[0].failures = 2;
        assert_eq!(
            codes(&report),
            ["batch_in_flight_old", "parked_batch_expiring"]
        );
    }

    #[test]
    fn a_queued_record_close_to_its_expiry_or_gone() {
        let mut report = healthy();
        let queue = report.kinds[0].queue.as_mut().expect("queue");
        queue.oldest_expires_in_seconds = Some(3_600);
        assert_eq!(codes(&report), ["queued_record_expiring"]);
        let queue = report.kinds[0].queue.as_mut().expect("queue");
        queue.oldest_expires_in_seconds = Some(-1);
        assert_eq!(codes(&report), ["queued_record_expired"]);
    }

    #[test]
    fn never_uploaded_is_only_an_alert_once_records_wait_too_long() {
        let mut report = healthy();
        let uploads = report.uploads.as_mut().expect("uploads");
        uploads.last_success_at = None;
        uploads.recent_runs = 0;
        assert!(codes(&report).is_empty());
        let queue = report.kinds[0].queue.as_mut().expect("queue");
        queue.oldest_age_seconds = Some(27 * 3_600);
        assert_eq!(codes(&report), ["upload_stale"]);
    }

    #[test]
    fn expired_records_in_the_run_history() {
        let mut report = healthy();
        report.uploads.as_mut().expect("uploads").expired_in_history = 4;
        let alerts = evaluate(&report, &limits());
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].code, "records_expired");
        assert!(alerts[0].value.starts_with("4 records"));
    }

    #[test]
    fn failure_rate_is_compared_with_the_threshold() {
        let mut report = healthy();
        let uploads = report.uploads.as_mut().expect("uploads");
        uploads.recent_runs = 20;
        uploads.recent_failures = 1; // 5%: at the threshold, not above
        assert!(codes(&report).is_empty());
        report.uploads.as_mut().expect("uploads").recent_failures = 2;
        assert_eq!(codes(&report), ["upload_failures"]);
    }

    #[test]
    fn a_stale_or_unreadable_warehouse_table() {
        let mut report = healthy();
        let fresh = TableFreshness {
            table: "flit_ml_raw.raw_bnpl_prediction_logs".into(),
            rows_last_24h: Some(5),
            newest_event_at: None,
            newest_event_age_hours: Some(2.0),
            error: None,
        };
        let old = TableFreshness {
            newest_event_age_hours: Some(30.0),
            ..fresh.clone()
        };
        let broken = TableFreshness {
            error: Some("403 Forbidden".into()),
            ..fresh.clone()
        };
        report.warehouse = Some(vec![fresh, old, broken]);
        assert_eq!(codes(&report), ["warehouse_stale", "warehouse_unreachable"]);
    }

    #[test]
    fn a_low_hit_rate_alerts_only_over_enough_lookups_in_the_last_hour() {
        let lookups = |hits: u64, misses: u64| crate::cache::LookupCounts {
            hits: 1_000_000,
            misses: 0,
            last_hour_hits: hits,
            last_hour_misses: misses,
            hit_rate: (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64),
        };
        let mut report = healthy();
        report.kinds[0].lookups = Some(lookups(79, 21));
        assert_eq!(
            codes(&report),
            ["hit_rate_low"],
            "79% of 100, whatever the totals"
        );
        report.kinds[0].lookups = Some(lookups(80, 20));
        assert!(codes(&report).is_empty(), "80% is the threshold");
        report.kinds[0].lookups = Some(lookups(10, 89));
        assert!(codes(&report).is_empty(), "99 lookups are too few to judge");
        report.kinds[0].lookups = Some(lookups(0, 0));
        assert!(codes(&report).is_empty(), "a quiet hour");
    }
}
