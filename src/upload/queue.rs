//! `UploadQueue`: one kind's queue of records waiting for the warehouse, and
//! the protocol that drains it without losing or doubling a record.
//!
//! 1. `take_batch` reads the head of the queue (without removing anything),
//!    bounded in rows and bytes, and records the batch as a manifest in Redis:
//!    its id, the exact payloads, and what will be dead-lettered or dropped.
//! 2. The warehouse writes the batch; sinks are idempotent per batch id.
//! 3. `settle` removes the batch's records from Redis (`finalize_batch.lua`),
//!    then the manifest.
//!
//! A crash anywhere leaves a manifest behind; the next run finds it with
//! `in_flight`, writes that same batch again (a no-op where it had landed)
//! and settles it. Records that arrive meanwhile are appended behind it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};
use redis::Script;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};

use crate::configuration::DeadLetterSettings;
use crate::dead_letter::KeptBody;
use crate::event::Rejection;
use crate::keys::{EventKind, UPLOAD_QUEUE, upload_manifest_key};
use crate::warehouse::rows::{self, Row};

/// Payload bytes aimed at per round trip while filling a batch; the number
/// of entries per page follows from the sizes seen so far, so a page stays
/// near this size whether events are 300 bytes or a megabyte.
const PAGE_BYTES: usize = 1 << 20;
/// Entries in the first page, before any size is known, and the most per page.
const FIRST_PAGE: usize = 32;
const MAX_PAGE: usize = 4_000;

/// SET that Redis runs even at maxmemory: the uploader is what frees memory,
/// so it must be able to start a batch when Redis is full.
const SET_EVEN_WHEN_FULL: &str = "#!lua flags=allow-oom\nredis.call('SET', KEYS[1], ARGV[1])";

/// A record in a batch: the queue key that named it and the content read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BatchRecord {
    pub key: String,
    pub id: String,
    pub payload: String,
    /// SHA-1 of the value as stored, when `payload` is not that value
    /// byte for byte (it was not UTF-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_sha1: Option<String>,
}

impl BatchRecord {
    /// The SHA-1 of the value as Redis holds it: settling removes the record
    /// only while it still holds exactly that.
    pub fn digest(&self) -> String {
        self.stored_sha1
            .clone()
            .unwrap_or_else(|| digest(&self.payload))
    }
}

/// A record that cannot be a row, and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InvalidRecord {
    pub record: BatchRecord,
    pub reason: String,
    /// The reason code of its dead letter (manifests of earlier versions
    /// carry none: theirs were all `schema_mismatch`).
    #[serde(default = "schema_mismatch")]
    pub code: String,
}

fn schema_mismatch() -> String {
    "schema_mismatch".to_owned()
}

/// The dead-letter reason code of a record the warehouse refused.
pub const REFUSED_BY_WAREHOUSE: &str = "refused_by_warehouse";

/// Everything needed to write a batch again and settle it, exactly as first decided.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BatchManifest {
    pub batch_id: String,
    pub kind: EventKind,
    pub ingested_at: DateTime<Utc>,
    pub records: Vec<BatchRecord>,
    pub invalid: Vec<InvalidRecord>,
    /// Queue entries whose record had expired before upload.
    pub expired: Vec<String>,
    /// A second queue entry for a key already in this batch.
    pub repeated: Vec<String>,
}

impl BatchManifest {
    pub fn rows(&self) -> Vec<Row> {
        self.records
            .iter()
            .filter_map(|r| rows::to_row(self.kind, &r.payload, self.ingested_at).ok())
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.invalid.is_empty()
            && self.expired.is_empty()
            && self.repeated.is_empty()
    }

    /// This batch with the records at `refused` (indexes into `records`)
    /// moved to `invalid`, with the warehouse's reason.
    pub fn with_refused(&self, refused: &[(usize, String)]) -> BatchManifest {
        let mut manifest = self.clone();
        if refused.is_empty() {
            return manifest;
        }
        let reasons: std::collections::HashMap<usize, &String> =
            refused.iter().map(|(i, r)| (*i, r)).collect();
        manifest.records.clear();
        for (index, record) in self.records.iter().enumerate() {
            match reasons.get(&index) {
                Some(reason) => manifest.invalid.push(InvalidRecord {
                    record: record.clone(),
                    reason: format!("refused by the warehouse: {reason}"),
                    code: REFUSED_BY_WAREHOUSE.to_owned(),
                }),
                None => manifest.records.push(record.clone()),
            }
        }
        manifest
    }

    pub fn entries(&self) -> usize {
        self.records.len() + self.invalid.len() + self.expired.len() + self.repeated.len()
    }
}

/// What settling a batch changed in Redis.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    pub removed: u64,
    pub dead_lettered: u64,
}

pub struct UploadQueue {
    kind: EventKind,
    /// The database holding this kind's records and queue.
    records: MultiplexedConnection,
    /// The database holding the service's own state (manifests).
    state: MultiplexedConnection,
    dead_letters: DeadLetterSettings,
    finalize: Script,
}

impl UploadQueue {
    pub fn new(
        kind: EventKind,
        records: MultiplexedConnection,
        state: MultiplexedConnection,
        dead_letters: DeadLetterSettings,
    ) -> Self {
        UploadQueue {
            kind,
            records,
            state,
            dead_letters,
            finalize: Script::new(include_str!("finalize_batch.lua")),
        }
    }

    pub async fn len(&mut self) -> redis::RedisResult<u64> {
        redis::cmd("LLEN")
            .arg(UPLOAD_QUEUE)
            .query_async(&mut self.records)
            .await
    }

    /// The batch a previous run left unsettled, if any.
    pub async fn in_flight(&mut self) -> anyhow::Result<Option<BatchManifest>> {
        let text: Option<String> = redis::cmd("GET")
            .arg(upload_manifest_key(self.kind))
            .query_async(&mut self.state)
            .await?;
        match text {
            None => Ok(None),
            Some(text) => Ok(Some(serde_json::from_str(&text).map_err(|e| {
                anyhow::anyhow!(
                    "{} holds an unreadable manifest: {e}",
                    upload_manifest_key(self.kind)
                )
            })?)),
        }
    }

    /// Reads the next batch from the head of the queue, skipping the first
    /// `skip` entries; with `record`, stores it as the in-flight manifest.
    /// Returns the rows of its records too, built once while checking them.
    pub async fn take_batch(
        &mut self,
        skip: usize,
        max_rows: usize,
        max_bytes: usize,
        record: bool,
    ) -> anyhow::Result<(BatchManifest, Vec<Row>)> {
        let ingested_at = unique_now();
        let mut manifest = BatchManifest {
            batch_id: new_batch_id(self.kind, ingested_at),
            kind: self.kind,
            ingested_at,
            records: Vec::new(),
            invalid: Vec::new(),
            expired: Vec::new(),
            repeated: Vec::new(),
        };
        let mut seen = HashSet::new();
        let mut rows = Vec::new();
        let mut bytes = 0usize;
        let mut start = skip;
        'pages: while manifest.records.len() + manifest.invalid.len() < max_rows
            && bytes < max_bytes
        {
            let read = manifest.records.len() + manifest.invalid.len();
            let page = match bytes.checked_div(read) {
                Some(average) if average > 0 => (PAGE_BYTES / average).clamp(FIRST_PAGE, MAX_PAGE),
                _ => FIRST_PAGE,
            }
            .min(max_rows - read);
            let keys: Vec<String> = redis::cmd("LRANGE")
                .arg(UPLOAD_QUEUE)
                .arg(start)
                .arg(start + page - 1)
                .query_async(&mut self.records)
                .await?;
            if keys.is_empty() {
                break;
            }
            start += keys.len();
            // Bytes, not text: a value that is not UTF-8 (set by hand past
            // the door) is one bad record, not a batch that never loads.
            let payloads: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut self.records)
                .await?;
            for (key, payload) in keys.into_iter().zip(payloads) {
                if !seen.insert(key.clone()) {
                    manifest.repeated.push(key);
                    continue;
                }
                let Some(payload) = payload else {
                    manifest.expired.push(key);
                    continue;
                };
                bytes += payload.len();
                let id = self.kind.id_of_key(&key).unwrap_or_default().to_owned();
                let (payload, stored_sha1, row) = match String::from_utf8(payload) {
                    Ok(text) => {
                        let row = rows::to_row(self.kind, &text, ingested_at);
                        (text, None, row)
                    }
                    Err(err) => (
                        String::from_utf8_lossy(err.as_bytes()).into_owned(),
                        Some(sha1_smol::Sha1::from(err.as_bytes()).digest().to_string()),
                        Err(Rejection::InvalidJson(format!(
                            "not UTF-8 ({})",
                            err.utf8_error()
                        ))),
                    ),
                };
                let record = BatchRecord {
                    key,
                    id,
                    payload,
                    stored_sha1,
                };
                match row {
                    Ok(row) => {
                        rows.push(row);
                        manifest.records.push(record);
                    }
                    Err(rejection) => manifest.invalid.push(InvalidRecord {
                        record,
                        reason: rejection.to_string(),
                        code: rejection.code().to_owned(),
                    }),
                }
                if bytes >= max_bytes {
                    break 'pages;
                }
            }
        }
        if record && !manifest.is_empty() {
            // Even at maxmemory: this batch's settling frees far more.
            let () = Script::new(SET_EVEN_WHEN_FULL)
                .key(upload_manifest_key(self.kind))
                .arg(serde_json::to_string(&manifest)?)
                .invoke_async(&mut self.state)
                .await?;
        }
        Ok((manifest, rows))
    }

    /// Removes a confirmed batch from Redis, then forgets its manifest.
    pub async fn settle(&mut self, manifest: &BatchManifest) -> anyhow::Result<Settled> {
        let mut invocation = self.finalize.prepare_invoke();
        invocation
            .key(UPLOAD_QUEUE)
            .key(self.kind.dead_letter_stream())
            .key(self.kind.dead_letters_trimmed_key())
            .arg(self.kind.superseded_prefix())
            .arg(manifest.records.len())
            .arg(manifest.invalid.len())
            .arg(manifest.expired.len() + manifest.repeated.len())
            .arg(self.dead_letters.max_len);
        for record in &manifest.records {
            invocation
                .arg(&record.key)
                .arg(&record.id)
                .arg(record.digest());
        }
        for invalid in &manifest.invalid {
            let record = &invalid.record;
            let kept = KeptBody::new(record.payload.as_bytes(), self.dead_letters.keep_bytes);
            invocation
                .arg(&record.key)
                .arg(&record.id)
                .arg(record.digest())
                .arg(&invalid.code)
                .arg(&invalid.reason)
                .arg(kept.data)
                .arg(kept.size)
                .arg(if kept.truncated { "1" } else { "0" });
        }
        for key in manifest.expired.iter().chain(&manifest.repeated) {
            invocation.arg(key);
        }
        let (settled, _moved, dead_lettered, _gone): (u64, u64, u64, u64) =
            invocation.invoke_async(&mut self.records).await?;
        redis::cmd("DEL")
            .arg(upload_manifest_key(self.kind))
            .exec_async(&mut self.state)
            .await?;
        Ok(Settled {
            removed: settled,
            dead_lettered,
        })
    }

    /// Gives a batch that could not be uploaded a full TTL again, so its
    /// records cannot expire while they wait for the next run.
    pub async fn extend_ttl(
        &mut self,
        manifest: &BatchManifest,
        ttl_seconds: u64,
    ) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        for record in &manifest.records {
            pipe.cmd("EXPIRE")
                .arg(&record.key)
                .arg(ttl_seconds)
                .arg("GT")
                .ignore();
        }
        pipe.exec_async(&mut self.records).await
    }
}

/// The hex SHA-1 of a payload, as Redis's `redis.sha1hex` computes it.
fn digest(payload: &str) -> String {
    sha1_smol::Sha1::from(payload).digest().to_string()
}

/// Now, to the microsecond, and later than any earlier call in this process:
/// a batch's `_ingestion_timestamp` is how it is found in the warehouse again,
/// so no two batches may share one (runs in different processes are
/// serialised by the upload lock).
fn unique_now() -> DateTime<Utc> {
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = Utc::now().timestamp_micros();
    let mut last = LAST.load(Ordering::SeqCst);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange(last, next, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return DateTime::from_timestamp_micros(next).unwrap_or_else(Utc::now),
            Err(actual) => last = actual,
        }
    }
}

/// Unique, sortable, and safe in file names and BigQuery job ids.
fn new_batch_id(kind: EventKind, at: DateTime<Utc>) -> String {
    format!(
        "{}_{}_{:016x}",
        kind.name(),
        at.format("%Y%m%dT%H%M%S%6fZ"),
        rand::random::<u64>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_redis_sha1hex() {
        // redis-cli EVAL "return redis.sha1hex('abc')" 0
        assert_eq!(digest("abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }

    #[test]
    fn ingestion_times_never_repeat() {
        let times: Vec<_> = (0..1000).map(|_| unique_now()).collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn batch_ids_are_unique_and_file_safe() {
        let now = Utc::now();
        let a = new_batch_id(EventKind::Prediction, now);
        let b = new_batch_id(EventKind::Prediction, now);
        assert_ne!(a, b);
        assert!(
            a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{a}"
        );
    }
}
