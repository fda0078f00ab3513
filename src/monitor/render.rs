//! The monitor report as text a person scans: a few aligned sections, then
//! the alerts with what to do.

use std::fmt::Write;

use super::{KindHealth, MonitorReport};

const MIB: f64 = 1024.0 * 1024.0;

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

pub fn text(report: &MonitorReport) -> String {
    let mut out = String::new();
    header(&mut out, report);
    redis(&mut out, report);
    kinds(&mut out, report);
    spool(&mut out, report);
    uploads(&mut out, report);
    warehouse(&mut out, report);
    alerts(&mut out, report);
    out
}

/// The status line: healthy, alerts, or Redis unreachable.
fn header(out: &mut String, report: &MonitorReport) {
    let status = match report.exit_code() {
        0 => "HEALTHY",
        1 => "ALERTS",
        _ => "REDIS UNREACHABLE",
    };
    let _ = writeln!(
        out,
        "flit-cache monitor  {}  {status}",
        report.generated_at.format("%Y-%m-%d %H:%M:%S UTC")
    );
}

/// The server: version, memory and what it projects, persistence, keys.
fn redis(out: &mut String, report: &MonitorReport) {
    let _ = writeln!(out, "\nRedis {}", report.redis.url);
    match &report.redis.server {
        None => {
            let _ = writeln!(
                out,
                "  unreachable: {}",
                report.redis.error.as_deref().unwrap_or("unknown error")
            );
        }
        Some(s) => {
            let limit = match s.maxmemory_bytes {
                0 => "no maxmemory".to_owned(),
                max => format!("maxmemory {:.1} MiB", max as f64 / MIB),
            };
            let _ = writeln!(
                out,
                "  version {}   latency {:.2} ms   clients {}",
                s.version, s.latency_ms, s.connected_clients
            );
            let _ = writeln!(
                out,
                "  memory {:.1} MiB ({limit}, policy {})   evicted keys {}",
                s.used_memory_bytes as f64 / MIB,
                s.maxmemory_policy,
                s.evicted_keys
            );
            if let Some(projected) = report.projected_memory_bytes {
                let stored: u64 = report
                    .kinds
                    .iter()
                    .filter_map(|k| k.volume.as_ref())
                    .map(|v| v.stored_last_24h)
                    .sum();
                let _ = writeln!(
                    out,
                    "  records kept for their TTL: {stored} stored in the last 24 h, {:.1} MiB projected",
                    projected as f64 / MIB
                );
            }
            let _ = writeln!(
                out,
                "  persistence: AOF {}, RDB save {}",
                if s.aof_enabled { "on" } else { "off" },
                match s.rdb_save.as_deref() {
                    None => "unknown (CONFIG not allowed)".to_owned(),
                    Some("") => "off".to_owned(),
                    Some(points) => format!("\"{points}\""),
                }
            );
            let keys: Vec<String> = s
                .keys_per_db
                .iter()
                .map(|(db, n)| format!("{db} {n}"))
                .collect();
            let _ = writeln!(
                out,
                "  keys: {}",
                if keys.is_empty() {
                    "none".to_owned()
                } else {
                    keys.join(", ")
                }
            );
        }
    }
}

/// One row per kind (queue, stream, lookups), then its batches in flight
/// or parked and what could not be read.
fn kinds(out: &mut String, report: &MonitorReport) {
    if report.kinds.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n{:<13} {:>3} {:>9} {:>9} {:>11} {:>9} {:>8} {:>8} {:>11} {:>10} {:>11}",
        "kind",
        "db",
        "queued",
        "in-batch",
        "oldest (h)",
        "stream",
        "lag",
        "pending",
        "dead-letter",
        "lookups/1h",
        "hit rate/1h"
    );
    for k in &report.kinds {
        kind(out, k);
    }
}

fn kind(out: &mut String, k: &KindHealth) {
    let q = k.queue.as_ref();
    let st = k.stream.as_ref();
    let l = k.lookups.as_ref();
    let _ = writeln!(
        out,
        "{:<13} {:>3} {:>9} {:>9} {:>11} {:>9} {:>8} {:>8} {:>11} {:>10} {:>11}",
        k.kind.name(),
        k.db,
        or_dash(q.map(|q| q.length)),
        or_dash(q.map(|q| q.in_flight)),
        or_dash(
            q.and_then(|q| q.oldest_age_seconds)
                .map(|s| format!("{:.1}", s as f64 / 3_600.0))
        ),
        or_dash(st.map(|s| s.length)),
        or_dash(st.and_then(|s| s.lag)),
        or_dash(st.map(|s| s.pending)),
        or_dash(st.map(|s| s.dead_letter_length)),
        or_dash(l.map(|l| l.last_hour())),
        or_dash(
            l.and_then(|l| l.hit_rate)
                .map(|r| format!("{:.1}%", r * 100.0))
        ),
    );
    if let Some(q) = q {
        if let Some(since) = q.in_flight_since {
            let _ = writeln!(
                out,
                "  a batch of {} entries in flight since {}",
                q.in_flight,
                since.format("%Y-%m-%d %H:%M:%S UTC")
            );
        }
        for parked in &q.parked {
            let _ = writeln!(
                out,
                "  parked batch {} ({} records, failed in {} runs): {}",
                parked.batch_id,
                parked.records,
                parked.failures,
                parked.last_error.as_deref().unwrap_or("-")
            );
        }
    }
    for error in &k.errors {
        let _ = writeln!(out, "  cannot read: {error}");
    }
}

fn spool(out: &mut String, report: &MonitorReport) {
    if report.spool_bytes > 0 {
        let _ = writeln!(
            out,
            "spooled on this host: {} bytes (replayed by `run`, or `flit-cache replay-spool`)",
            report.spool_bytes
        );
    }
}

/// The last success, the recent failure rate, and the last run's report.
fn uploads(out: &mut String, report: &MonitorReport) {
    if let Some(u) = &report.uploads {
        let _ = writeln!(out, "\nUploads");
        let _ = writeln!(
            out,
            "  last success: {}",
            u.last_success_at.map_or_else(
                || "never".to_owned(),
                |at| format!(
                    "{} ({:.1} h ago)",
                    at.format("%Y-%m-%d %H:%M:%S UTC"),
                    (report.generated_at - at).num_minutes() as f64 / 60.0
                )
            )
        );
        let _ = writeln!(
            out,
            "  failure rate: {} of the last {} runs{}",
            u.recent_failures,
            u.recent_runs,
            u.failure_rate()
                .map(|r| format!(" ({:.0}%)", r * 100.0))
                .unwrap_or_default()
        );
        if let Some(last) = &u.last_run {
            let _ = write!(out, "  last run: ");
            out.push_str(&last.to_text().replace('\n', "\n  "));
            out.truncate(out.trim_end().len());
            out.push('\n');
        }
    }
}

/// Each table's rows of the last 24 hours and its newest event (`--bigquery`).
fn warehouse(out: &mut String, report: &MonitorReport) {
    if let Some(tables) = &report.warehouse {
        let _ = writeln!(
            out,
            "\n{:<42} {:>12} {:>26}",
            "warehouse table", "rows 24 h", "newest event"
        );
        for t in tables {
            match &t.error {
                Some(error) => {
                    let _ = writeln!(out, "{:<42} unreadable: {error}", t.table);
                }
                None => {
                    let _ = writeln!(
                        out,
                        "{:<42} {:>12} {:>26}",
                        t.table,
                        or_dash(t.rows_last_24h),
                        t.newest_event_at.map_or_else(
                            || "-".to_owned(),
                            |at| format!(
                                "{} ({:.1} h)",
                                at.format("%Y-%m-%d %H:%M"),
                                t.newest_event_age_hours.unwrap_or_default()
                            )
                        )
                    );
                }
            }
        }
    }
}

/// The alerts, each with its measure, threshold and what to do.
fn alerts(out: &mut String, report: &MonitorReport) {
    if report.alerts.is_empty() {
        let _ = writeln!(out, "\nNo alerts.");
    } else {
        let _ = writeln!(out, "\n{} alert(s):", report.alerts.len());
        for a in &report.alerts {
            let _ = writeln!(out, "  [{}] {}", a.code, a.what);
            let _ = writeln!(out, "      measured {}; threshold {}", a.value, a.threshold);
            let _ = writeln!(out, "      do: {}", a.action);
        }
    }
}
