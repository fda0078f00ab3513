//! `BatchManifest`: everything needed to write a batch again and settle it,
//! exactly as first decided, kept in Redis while the batch is in flight or
//! parked. When the warehouse refuses some of a batch's rows, the manifest
//! records the split: the parts still to write (each with an id and an
//! ingestion time of its own, so each is found again in the warehouse on
//! its own) and the rows refused, with the warehouse's reason.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::keys::EventKind;
use crate::warehouse::rows::{self, Row};

/// A record in a batch: the queue key that named it and the content read.
///
/// Stored (format 3) as its position in the batch's entries list (`at`),
/// where the take saved the key and the value as read: the manifest stays
/// small, and the batch is re-read from that list, never from the record
/// key, so what a recovered batch writes is what was first decided.
/// Manifests of format 2 and before carry key, id and payload inline, and
/// are still read so.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
pub struct BatchRecord {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub payload: String,
    /// SHA-1 of the value as stored, when `payload` is not that value
    /// byte for byte (it was not UTF-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_sha1: Option<String>,
    /// The record's pair in the batch's entries list (key at `2 * at`,
    /// value at `2 * at + 1`); none for a record carried inline.
    #[serde(default)]
    pub at: Option<usize>,
}

impl Serialize for BatchRecord {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        if let Some(at) = self.at {
            let mut state = serializer.serialize_struct("BatchRecord", 1)?;
            state.serialize_field("at", &at)?;
            return state.end();
        }
        let fields = 3 + usize::from(self.stored_sha1.is_some());
        let mut state = serializer.serialize_struct("BatchRecord", fields)?;
        state.serialize_field("key", &self.key)?;
        state.serialize_field("id", &self.id)?;
        state.serialize_field("payload", &self.payload)?;
        if let Some(sha1) = &self.stored_sha1 {
            state.serialize_field("stored_sha1", sha1)?;
        }
        state.end()
    }
}

impl BatchRecord {
    /// The SHA-1 of the value as Redis holds it: settling removes the record
    /// only while it still holds exactly that. One per record version, so it
    /// is also the row's insertId.
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

/// A part of a batch still to write.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Part {
    pub id: String,
    pub ingested_at: DateTime<Utc>,
    /// Indexes into the batch's `records`.
    pub rows: Vec<usize>,
}

/// What is left of a batch the warehouse refused rows of.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Split {
    pub pending: Vec<Part>,
    /// Records the warehouse refused (index into `records`), and why.
    pub refused: Vec<(usize, String)>,
    /// Parts made so far, for the next part's id.
    pub parts_made: u32,
}

/// The manifest format this binary writes and reads. 1: the format before
/// it carried a version (read as 1); 2: with it; 3: records as positions in
/// the batch's entries list, which have left the queue when the manifest is
/// saved. A newer one is refused, never misread.
pub const MANIFEST_FORMAT: u32 = 3;

/// Whether a batch of manifest `format`, while in flight, still has its
/// entries at the head of the queue: formats before 3 left them there until
/// the settle; from 3 on they leave the queue when the manifest is saved.
fn entries_stay_queued(format: u32) -> bool {
    format < 3
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BatchManifest {
    /// Must stay the first field: scripts check a manifest's batch by its
    /// text's beginning (`{"batch_id":"…"`).
    pub batch_id: String,
    #[serde(default = "format_one")]
    pub format: u32,
    pub kind: EventKind,
    pub ingested_at: DateTime<Utc>,
    pub records: Vec<BatchRecord>,
    pub invalid: Vec<InvalidRecord>,
    /// Queue entries whose record had expired before upload.
    pub expired: Vec<String>,
    /// A second queue entry for a key already in this batch.
    pub repeated: Vec<String>,
    /// Whether the batch is in flight (true) or parked. In flight, a
    /// manifest of format 2 or before still has its entries at the head of
    /// the queue (see `entries_in_queue`).
    #[serde(default = "in_the_queue")]
    pub queued: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
    /// Runs in which the batch failed, and the last error.
    #[serde(default)]
    pub failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

fn in_the_queue() -> bool {
    true
}

fn format_one() -> u32 {
    1
}

impl BatchManifest {
    pub fn new(kind: EventKind) -> Self {
        let ingested_at = unique_now();
        BatchManifest {
            batch_id: new_batch_id(kind, ingested_at),
            format: MANIFEST_FORMAT,
            kind,
            ingested_at,
            records: Vec::new(),
            invalid: Vec::new(),
            expired: Vec::new(),
            repeated: Vec::new(),
            queued: true,
            split: None,
            failures: 0,
            last_error: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.invalid.is_empty()
            && self.expired.is_empty()
            && self.repeated.is_empty()
    }

    /// Whether the batch's entries are still in the upload queue: only an
    /// in-flight batch cut by a binary of manifest format 2 or before. From
    /// format 3 on, entries leave the queue when the manifest is saved.
    pub fn entries_in_queue(&self) -> bool {
        self.queued && entries_stay_queued(self.format)
    }

    /// Whether the binary that cut the batch may have claimed nothing
    /// (format 1 covers binaries before and after claims): its versions
    /// without a claim are then settled by their content alone.
    pub fn may_lack_claims(&self) -> bool {
        self.format < 2
    }

    pub fn entries(&self) -> usize {
        self.records.len() + self.invalid.len() + self.expired.len() + self.repeated.len()
    }

    /// Every queue key of the batch, as many times as it was queued.
    pub fn queue_keys(&self) -> impl Iterator<Item = &str> {
        self.records
            .iter()
            .map(|r| r.key.as_str())
            .chain(self.invalid.iter().map(|i| i.record.key.as_str()))
            .chain(self.expired.iter().map(String::as_str))
            .chain(self.repeated.iter().map(String::as_str))
    }

    /// The next part to write: the whole batch until the warehouse refused
    /// some of it, then what the split left.
    pub fn next_part(&self) -> Option<Part> {
        match &self.split {
            None if self.records.is_empty() => None,
            None => Some(Part {
                id: self.batch_id.clone(),
                ingested_at: self.ingested_at,
                rows: (0..self.records.len()).collect(),
            }),
            Some(split) => split.pending.first().cloned(),
        }
    }

    /// Ids of every part still to write.
    pub fn pending_part_ids(&self) -> Vec<String> {
        match &self.split {
            None => vec![self.batch_id.clone()],
            Some(split) => split.pending.iter().map(|p| p.id.clone()).collect(),
        }
    }

    /// The rows of a part, built with the part's own ingestion time; or the
    /// records (indexes into the part's rows) that are no rows under this
    /// version's rules, which an earlier version's manifest may hold. They
    /// must be split off, never skipped: a skipped record would be settled
    /// as uploaded.
    pub fn rows_of(&self, part: &Part) -> Result<Vec<Row>, Vec<(usize, String)>> {
        let mut rows = Vec::with_capacity(part.rows.len());
        let mut refused = Vec::new();
        for (at, &i) in part.rows.iter().enumerate() {
            let built = match self.records.get(i) {
                Some(record) => rows::to_row(self.kind, &record.payload, part.ingested_at)
                    .map_err(|err| format!("not a row under this version's rules: {err}")),
                None => Err(format!("the manifest has no record {i}")),
            };
            match built {
                Ok(row) => rows.push(row),
                Err(why) => refused.push((at, why)),
            }
        }
        match refused.is_empty() {
            true => Ok(rows),
            false => Err(refused),
        }
    }

    /// The part was written; `refused` (indexes into the part's rows) were
    /// refused one by one by the warehouse (streaming inserts).
    pub fn part_written(&mut self, part: &Part, refused: &[(usize, String)]) {
        let refused = refused
            .iter()
            .filter_map(|(i, why)| Some((*part.rows.get(*i)?, why.clone())));
        let split = self.split.get_or_insert_with(Split::default);
        split.refused.extend(refused);
        split.pending.retain(|p| p.id != part.id);
    }

    /// The warehouse refused the part because of some rows: `named` (indexes
    /// into the part's rows) are refused; the rest goes on as a new part. When
    /// no row was named, the part is halved to find them, and a single row
    /// left alone is the culprit.
    pub fn split_part(&mut self, part: &Part, named: &[(usize, String)], message: &str) {
        let named: HashMap<usize, &String> = named
            .iter()
            .filter_map(|(i, why)| Some((*part.rows.get(*i)?, why)))
            .collect();
        let mut refused: Vec<(usize, String)> =
            named.iter().map(|(i, why)| (*i, (*why).clone())).collect();
        let rest: Vec<usize> = part
            .rows
            .iter()
            .copied()
            .filter(|i| !named.contains_key(i))
            .collect();
        let children: Vec<Vec<usize>> = if !named.is_empty() {
            vec![rest].into_iter().filter(|r| !r.is_empty()).collect()
        } else if rest.len() == 1 {
            refused.push((rest[0], message.to_owned()));
            Vec::new()
        } else {
            let (first, second) = rest.split_at(rest.len() / 2);
            vec![first.to_vec(), second.to_vec()]
        };
        let batch_id = self.batch_id.clone();
        let split = self.split.get_or_insert_with(|| Split {
            pending: vec![part.clone()],
            ..Split::default()
        });
        refused.sort();
        split.refused.extend(refused);
        let at = split
            .pending
            .iter()
            .position(|p| p.id == part.id)
            .unwrap_or(0);
        let made: Vec<Part> = children
            .into_iter()
            .map(|rows| {
                split.parts_made += 1;
                Part {
                    id: format!("{batch_id}_part{}", split.parts_made),
                    ingested_at: unique_now(),
                    rows,
                }
            })
            .collect();
        split
            .pending
            .splice(at..(at + 1).min(split.pending.len()), made);
    }

    /// The batch as settled once every part is written: the records the
    /// warehouse refused move to `invalid`, with its reason.
    pub fn settled_form(&self) -> BatchManifest {
        let mut manifest = self.clone();
        let Some(split) = &self.split else {
            return manifest;
        };
        let refused: HashMap<usize, &String> = split.refused.iter().map(|(i, r)| (*i, r)).collect();
        manifest.records.clear();
        for (index, record) in self.records.iter().enumerate() {
            match refused.get(&index) {
                Some(reason) => manifest.invalid.push(InvalidRecord {
                    record: record.clone(),
                    reason: format!("refused by the warehouse: {reason}"),
                    code: REFUSED_BY_WAREHOUSE.to_owned(),
                }),
                None => manifest.records.push(record.clone()),
            }
        }
        manifest.split = None;
        manifest
    }

    /// Records refused by the warehouse so far.
    pub fn refused(&self) -> usize {
        self.split.as_ref().map_or(0, |s| s.refused.len())
    }
}

/// The few fields of a stored manifest that tell how far a batch is,
/// without reading its records into memory (`monitor`, `/metrics`, and a
/// run's count of what it keeps).
#[derive(Debug, Deserialize)]
pub struct ManifestHead {
    #[serde(default = "format_one")]
    pub format: u32,
    pub ingested_at: DateTime<Utc>,
    records: Vec<serde::de::IgnoredAny>,
    invalid: Vec<serde::de::IgnoredAny>,
    expired: Vec<serde::de::IgnoredAny>,
    repeated: Vec<serde::de::IgnoredAny>,
}

impl ManifestHead {
    /// Queue entries the batch took.
    pub fn entries(&self) -> usize {
        self.records.len() + self.invalid.len() + self.expired.len() + self.repeated.len()
    }

    /// Whether those entries still head the queue (an in-flight manifest of
    /// format 2 or before) or left it when the batch was taken.
    pub fn entries_in_queue(&self) -> bool {
        entries_stay_queued(self.format)
    }
}

/// A short account of a parked batch, kept beside it for `monitor`, which
/// never reads the manifests themselves (nor the entries lists that hold
/// every payload).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ParkedSummary {
    pub batch_id: String,
    pub records: usize,
    pub failures: u32,
    pub last_error: Option<String>,
    pub parked_at: DateTime<Utc>,
    /// When its records' TTLs were last renewed (each failure renews them).
    pub renewed_at: DateTime<Utc>,
}

impl ParkedSummary {
    pub fn of(manifest: &BatchManifest, parked_at: DateTime<Utc>) -> Self {
        ParkedSummary {
            batch_id: manifest.batch_id.clone(),
            records: manifest.records.len(),
            failures: manifest.failures,
            last_error: manifest.last_error.clone(),
            parked_at,
            renewed_at: Utc::now(),
        }
    }
}

/// The hex SHA-1 of a payload, as Redis's `redis.sha1hex` computes it.
pub fn digest(payload: &str) -> String {
    sha1_smol::Sha1::from(payload).digest().to_string()
}

/// Now, to the microsecond, and later than any earlier call in this process:
/// a batch's (or a part's) `_ingestion_timestamp` is how it is found in the
/// warehouse again, so no two may share one (runs in different processes
/// are serialised by the upload lock).
pub fn unique_now() -> DateTime<Utc> {
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

    fn manifest(n: usize) -> BatchManifest {
        let mut m = BatchManifest::new(EventKind::Prediction);
        m.records = (0..n)
            .map(|i| BatchRecord {
                key: format!("pred:p{i}"),
                id: format!("p{i}"),
                payload: format!(
                    r#"{{"prediction_id":"p{i}","prediction_timestamp":"2026-11-20T00:00:00Z"}}"#
                ),
                stored_sha1: None,
                at: None,
            })
            .collect();
        m
    }

    #[test]
    fn records_that_are_no_rows_are_named_never_skipped() {
        // An earlier version's manifest may hold what today's rules refuse.
        let mut m = manifest(3);
        m.records[1].payload =
            r#"{"prediction_id":"p1","selected_prediction":"high","prediction_timestamp":"2026-11-20T00:00:00Z"}"#.to_owned();
        let part = m.next_part().expect("part");
        let refused = m.rows_of(&part).expect_err("one is no row");
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, 1);
        m.split_part(&part, &refused, "");
        let rest = m.next_part().expect("the rest");
        assert_eq!(m.rows_of(&rest).expect("rows").len(), 2);
        m.part_written(&rest, &[]);
        let settled = m.settled_form();
        assert_eq!(settled.records.len(), 2);
        assert_eq!(settled.invalid.len(), 1);
        assert!(settled.invalid[0].reason.contains("selected_prediction"));
    }

    #[test]
    fn a_manifest_s_text_begins_with_its_batch_id() {
        // The settle, park and save scripts tell manifests apart by this
        // prefix alone, without reading the payloads that follow.
        let manifest = manifest(2);
        let text = serde_json::to_string(&manifest).expect("json");
        let prefix = format!("{{\"batch_id\":\"{}\"", manifest.batch_id);
        assert!(text.starts_with(&prefix), "{text}");
    }

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
        let a = BatchManifest::new(EventKind::Prediction).batch_id;
        let b = BatchManifest::new(EventKind::Prediction).batch_id;
        assert_ne!(a, b);
        assert!(
            a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{a}"
        );
    }

    #[test]
    fn named_rows_are_refused_and_the_rest_goes_on_as_one_part() {
        let mut m = manifest(5);
        let whole = m.next_part().expect("a part");
        m.split_part(
            &whole,
            &[(1, "bad".into()), (3, "worse".into())],
            "job failed",
        );
        let next = m.next_part().expect("the rest");
        assert_eq!(next.rows, [0, 2, 4]);
        assert_ne!(next.id, m.batch_id);
        assert!(
            next.ingested_at > m.ingested_at,
            "a part is found on its own"
        );
        m.part_written(&next, &[]);
        assert!(m.next_part().is_none());
        let settled = m.settled_form();
        assert_eq!(settled.records.len(), 3);
        assert_eq!(settled.invalid.len(), 2);
        assert!(
            settled
                .invalid
                .iter()
                .all(|i| i.code == REFUSED_BY_WAREHOUSE)
        );
        assert!(settled.invalid[1].reason.contains("worse"));
    }

    #[test]
    fn unnamed_faults_are_found_by_halving_down_to_one_row() {
        let mut m = manifest(8);
        let poison = 5;
        let mut jobs = 0;
        while let Some(part) = m.next_part() {
            jobs += 1;
            assert!(jobs < 20, "bounded");
            if part.rows.contains(&poison) {
                m.split_part(&part, &[], "too many errors");
            } else {
                m.part_written(&part, &[]);
            }
        }
        let settled = m.settled_form();
        assert_eq!(settled.records.len(), 7);
        assert_eq!(settled.invalid.len(), 1);
        assert_eq!(settled.invalid[0].record.id, "p5");
        // 8 -> 4+4 -> (4 ok) 2+2 -> (2 ok) 1+1: seven jobs, about 2 log2(n).
        assert_eq!(jobs, 7);
    }

    #[test]
    fn an_old_manifest_reads_as_queued_with_no_split() {
        let text = r#"{"batch_id":"b","kind":"predictions","ingested_at":"2026-11-23T00:00:00Z","records":[],"invalid":[{"record":{"key":"pred:x","id":"x","payload":"{}"},"reason":"r"}],"expired":[],"repeated":[]}"#;
        let m: BatchManifest = serde_json::from_str(text).expect("today's format");
        assert!(m.queued && m.split.is_none() && m.failures == 0);
        assert_eq!(m.invalid[0].code, "schema_mismatch");
    }
}
