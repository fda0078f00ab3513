//! The event stream of each kind and its consumer group: producers append
//! (XADD), workers read as members of the group, take over entries that
//! stalled consumers left pending (XAUTOCLAIM), acknowledge what they
//! committed, and trim what every group has acknowledged. Every read comes
//! with the server's clock, which the door's window is read against.

use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::aio::MultiplexedConnection;

use super::connection::clock_reading;
use super::scripts;
use super::stream_entries::{self, StreamEntry};
use crate::keys::{CONSUMER_GROUP, DATA_FIELD, EventKind};

/// Appends each payload to `kind`'s stream as one entry (`data` field), in
/// one pipeline.
pub async fn append(
    conn: &mut MultiplexedConnection,
    kind: EventKind,
    payloads: &[String],
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    for payload in payloads {
        pipe.cmd("XADD")
            .arg(kind.stream())
            .arg("*")
            .arg(DATA_FIELD)
            .arg(payload)
            .ignore();
    }
    pipe.exec_async(conn).await
}

/// Creates the consumer group at the start of the stream (so events pushed
/// before the first start are processed), and the stream if needed; a
/// group that exists is left as it is. Works at maxmemory (see the script).
pub async fn ensure_group(
    conn: &mut MultiplexedConnection,
    kind: EventKind,
) -> redis::RedisResult<()> {
    let created: redis::RedisResult<()> = scripts::CREATE_GROUP
        .key(kind.stream())
        .arg(CONSUMER_GROUP)
        .invoke_async(conn)
        .await;
    match created {
        Err(err) if err.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// Where a group read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// Entries delivered to this consumer but never acknowledged.
    OwnPending,
    /// New entries, waiting up to `block` for one.
    New { block: Duration },
}

/// Entries read, with the server's clock right after the read.
pub struct Read {
    pub entries: Vec<StreamEntry>,
    pub server_now: DateTime<Utc>,
}

/// Reads up to `count` entries of `kind` as `consumer` of the group.
pub async fn read(
    conn: &mut MultiplexedConnection,
    kind: EventKind,
    consumer: &str,
    count: usize,
    from: ReadFrom,
) -> redis::RedisResult<Read> {
    let mut read = redis::cmd("XREADGROUP");
    read.arg("GROUP")
        .arg(CONSUMER_GROUP)
        .arg(consumer)
        .arg("COUNT")
        .arg(count);
    let start = match from {
        ReadFrom::OwnPending => "0",
        ReadFrom::New { block } => {
            read.arg("BLOCK").arg(block.as_millis() as u64);
            ">"
        }
    };
    read.arg("STREAMS").arg(kind.stream()).arg(start);
    let mut pipe = redis::pipe();
    pipe.add_command(read).cmd("TIME");
    let (reply, clock): (redis::Value, (i64, i64)) = pipe.query_async(conn).await?;
    Ok(Read {
        entries: stream_entries::from_read_reply(reply)?,
        server_now: clock_reading(clock),
    })
}

/// What one XAUTOCLAIM step took over.
pub struct Claimed {
    /// Where the next step starts; `0-0` once the pending list was walked.
    pub cursor: String,
    pub read: Read,
    /// Pending entries whose content was deleted from the stream; Redis
    /// already dropped them from the pending list.
    pub deleted: Vec<String>,
}

/// Takes over up to `count` entries pending longer than `idle` on any
/// consumer, from `cursor` on.
pub async fn claim_stalled(
    conn: &mut MultiplexedConnection,
    kind: EventKind,
    consumer: &str,
    idle: Duration,
    cursor: &str,
    count: usize,
) -> redis::RedisResult<Claimed> {
    let (reply, clock): (redis::Value, (i64, i64)) = redis::pipe()
        .cmd("XAUTOCLAIM")
        .arg(kind.stream())
        .arg(CONSUMER_GROUP)
        .arg(consumer)
        .arg(idle.as_millis() as u64)
        .arg(cursor)
        .arg("COUNT")
        .arg(count)
        .cmd("TIME")
        .query_async(conn)
        .await?;
    let (cursor, entries, deleted) = stream_entries::from_autoclaim_reply(reply)?;
    Ok(Claimed {
        cursor,
        read: Read {
            entries,
            server_now: clock_reading(clock),
        },
        deleted,
    })
}

/// Acknowledges one entry outside a commit (an entry that vanished).
pub async fn ack(
    conn: &mut MultiplexedConnection,
    kind: EventKind,
    id: &str,
) -> redis::RedisResult<()> {
    redis::cmd("XACK")
        .arg(kind.stream())
        .arg(CONSUMER_GROUP)
        .arg(id)
        .exec_async(conn)
        .await
}

/// Trims what every group has acknowledged and removes consumers idle
/// longer than `stale` with nothing pending (see trim_stream.lua); returns
/// the entries trimmed.
pub async fn trim(
    conn: &mut MultiplexedConnection,
    kind: EventKind,
    stale: Duration,
) -> redis::RedisResult<u64> {
    scripts::TRIM_STREAM
        .key(kind.stream())
        .arg(CONSUMER_GROUP)
        .arg(stale.as_millis() as u64)
        .invoke_async(conn)
        .await
}
