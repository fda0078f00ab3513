//! Upload run reports in Redis (database 0): the last run, a capped history
//! and the time of the last fully successful run, which `monitor`,
//! `/metrics` and the schedule's catch-up read.

use chrono::{DateTime, Utc};
use redis::aio::MultiplexedConnection;

use crate::keys::{UPLOAD_HISTORY, UPLOAD_LAST_RUN, UPLOAD_LAST_SUCCESS};
use crate::upload::{HISTORY_LENGTH, RunReport, RunStatus};

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

/// The status of the last run kept (busy and dry runs are not kept), if any
/// was and it can be read.
pub async fn last_status(
    state: &mut MultiplexedConnection,
) -> redis::RedisResult<Option<RunStatus>> {
    let text: Option<String> = redis::cmd("GET")
        .arg(UPLOAD_LAST_RUN)
        .query_async(state)
        .await?;
    Ok(text
        .and_then(|text| serde_json::from_str::<RunReport>(&text).ok())
        .map(|report| report.status))
}

/// When the last upload run that kept nothing back finished, if any did.
/// `/metrics` and the schedule read this key alone, not the whole history.
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
