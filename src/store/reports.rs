//! Upload run reports in Redis (database 0): the last run, a capped history
//! and the time of the last fully successful run, which `monitor`,
//! `/metrics` and the schedule's catch-up read.

use chrono::{DateTime, Utc};
use redis::aio::MultiplexedConnection;

use super::run_report::{HISTORY_LENGTH, RunReport, RunStatus};
use crate::keys::{UPLOAD_HISTORY, UPLOAD_LAST_RUN, UPLOAD_LAST_SUCCESS, UPLOAD_TABLE_OUTCOMES};

/// Keeps `report` for the monitor; dry runs change nothing and a busy run
/// did nothing, so neither is kept.
pub async fn keep(conn: &mut MultiplexedConnection, report: &RunReport) -> redis::RedisResult<()> {
    if report.dry_run || report.status == RunStatus::Busy {
        return Ok(());
    }
    let json = serde_json::to_string(report).map_err(|e| {
        redis::RedisError::from((redis::ErrorKind::Client, "report", e.to_string()))
    })?;
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("SET")
        .arg(UPLOAD_LAST_RUN)
        .arg(&json)
        .ignore()
        .cmd("LPUSH")
        .arg(UPLOAD_HISTORY)
        .arg(&json)
        .ignore()
        .cmd("LTRIM")
        .arg(UPLOAD_HISTORY)
        .arg(0)
        .arg(HISTORY_LENGTH - 1)
        .ignore();
    if report.status == RunStatus::Ok {
        pipe.cmd("SET")
            .arg(UPLOAD_LAST_SUCCESS)
            .arg(report.finished_at.to_rfc3339())
            .ignore();
    }
    pipe.exec_async(conn).await
}

/// The tables among `tables` whose last upload run kept something back.
pub async fn failed_before(
    state: &mut MultiplexedConnection,
    tables: &[String],
) -> redis::RedisResult<Vec<String>> {
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let outcomes: Vec<Option<String>> = redis::cmd("HMGET")
        .arg(UPLOAD_TABLE_OUTCOMES)
        .arg(tables)
        .query_async(state)
        .await?;
    Ok(tables
        .iter()
        .zip(outcomes)
        .filter(|(_, outcome)| outcome.as_deref() == Some("failed"))
        .map(|(table, _)| table.clone())
        .collect())
}

/// Notes each table's outcome in this run (`failed`: it kept something back).
pub async fn note_outcomes(
    state: &mut MultiplexedConnection,
    outcomes: &[(String, bool)],
) -> redis::RedisResult<()> {
    if outcomes.is_empty() {
        return Ok(());
    }
    let mut command = redis::cmd("HSET");
    command.arg(UPLOAD_TABLE_OUTCOMES);
    for (table, failed) in outcomes {
        command
            .arg(table)
            .arg(if *failed { "failed" } else { "ok" });
    }
    command.query_async(state).await
}

/// When the last upload run that kept nothing back finished, if any did.
/// The schedule's catch-up reads this key alone, not the whole history.
pub async fn last_success(
    state: &mut MultiplexedConnection,
) -> redis::RedisResult<Option<DateTime<Utc>>> {
    let text: Option<String> = redis::cmd("GET")
        .arg(UPLOAD_LAST_SUCCESS)
        .query_async(state)
        .await?;
    Ok(parse_time(text))
}

/// The last success and every kept report, newest first, as text.
pub async fn history(
    state: &mut MultiplexedConnection,
) -> redis::RedisResult<(Option<DateTime<Utc>>, Vec<String>)> {
    let (last_success, history): (Option<String>, Vec<String>) = redis::pipe()
        .cmd("GET")
        .arg(UPLOAD_LAST_SUCCESS)
        .cmd("LRANGE")
        .arg(UPLOAD_HISTORY)
        .arg(0)
        .arg(-1)
        .query_async(state)
        .await?;
    Ok((parse_time(last_success), history))
}

fn parse_time(text: Option<String>) -> Option<DateTime<Utc>> {
    text.and_then(|text| DateTime::parse_from_rfc3339(&text).ok())
        .map(|t| t.with_timezone(&Utc))
}
