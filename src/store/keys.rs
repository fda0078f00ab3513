//! The one place that names things in Redis: streams, dead-letter streams,
//! record keys, the upload queue and the consumer group. Every other module
//! asks here instead of formatting key strings itself.

use std::fmt;

/// The consumer group every worker joins, on both streams.
pub const CONSUMER_GROUP: &str = "flit-cache";

/// The list of record keys waiting for the batch upload (one per DB).
pub const UPLOAD_QUEUE: &str = "upload_queue";

/// The upload lock of `kind`: one upload of the kind at a time across all
/// processes. In the kind's database, beside the keys it guards, so every
/// script that writes for an upload checks it in the same step (a fence).
pub fn upload_lock_key(kind: EventKind) -> String {
    format!("flit:upload:lock:{}", kind.name())
}

/// The version of the key layout in this database (see `layout`); in each
/// kind's database.
pub const LAYOUT: &str = "flit:layout";

/// The report of the last upload run (JSON).
pub const UPLOAD_LAST_RUN: &str = "flit:upload:last_run";
/// Hash: table → `failed` or `ok`, its outcome in the last run that
/// uploaded it, so a notification says when that table recovered.
pub const UPLOAD_TABLE_OUTCOMES: &str = "flit:upload:table_outcomes";

/// Reports of recent upload runs, newest first, capped.
pub const UPLOAD_HISTORY: &str = "flit:upload:history";

/// Finish time (RFC 3339) of the last upload run that kept nothing back.
pub const UPLOAD_LAST_SUCCESS: &str = "flit:upload:last_success";

/// Whether a record lookup found its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupResult {
    Hit,
    Miss,
}

impl LookupResult {
    pub const ALL: [LookupResult; 2] = [LookupResult::Hit, LookupResult::Miss];

    pub fn name(self) -> &'static str {
        match self {
            LookupResult::Hit => "hits",
            LookupResult::Miss => "misses",
        }
    }
}

/// Lookups of `kind` with `result` since the counters began, an integer in
/// the state database kept by every process that looks up (`RecordCache`,
/// the Python client): `flit:cache:<kind>:<hits|misses>`.
pub fn lookup_total_key(kind: EventKind, result: LookupResult) -> String {
    format!("flit:cache:{}:{}", kind.name(), result.name())
}

/// Lookups of `kind` with `result` in minute `minute` of the hour (0-59),
/// `flit:cache:<kind>:<hits|misses>:<MM>`: an integer that expires
/// [`LOOKUP_MINUTE_TTL_SECONDS`] after the minute's first lookup, so it is
/// gone before the clock comes back to that minute, and the minutes that
/// exist are the last hour's. The counters are plain integers under names
/// from a closed set, so the lookup user (flit-reader) may INCR them and
/// can grow Redis by no more than these 244 keys.
pub fn lookup_minute_key(kind: EventKind, result: LookupResult, minute: u32) -> String {
    format!(
        "flit:cache:{}:{}:{:02}",
        kind.name(),
        result.name(),
        minute % 60
    )
}

/// How long a minute's lookup counter lives: 59 minutes, so one made at
/// the last second of its minute is gone before that minute comes again.
pub const LOOKUP_MINUTE_TTL_SECONDS: i64 = 59 * 60;

/// The batch of `kind` being uploaded, until it is settled or parked (a
/// string, in the kind's database; today's binary kept it in database 0).
pub fn upload_manifest_key(kind: EventKind) -> String {
    format!("flit:upload:inflight:{}", kind.name())
}

/// The entries a batch of `kind` took from the queue, in take order: a list
/// of record key, value, record key, value... (the value exactly as it
/// was read), for the batch's whole life in flight and parked. The manifest
/// holds positions into it, so the manifest stays small however large the
/// records, and a recovered batch writes exactly what was first read.
pub fn batch_entries_key(kind: EventKind, batch_id: &str) -> String {
    format!("flit:upload:entries:{}:{batch_id}", kind.name())
}

/// Where the take collects a batch's entries, page by page, until the
/// batch's manifest is saved and this list becomes its `batch_entries_key`.
/// One take runs at a time per kind (under the lock); a take that died
/// leaves it behind, and the next take starts it afresh.
pub fn taking_key(kind: EventKind) -> String {
    format!("flit:upload:taking:{}", kind.name())
}

/// How many of a batch's settle items are done, counted from its expired
/// entries, which come first (see settle_slice.lua): a slice run again after
/// a crash skips the expired entries it dead-lettered before.
pub fn settle_cursor_key(kind: EventKind, batch_id: &str) -> String {
    format!("flit:upload:settled:{}:{batch_id}", kind.name())
}

/// Batches of `kind` the warehouse did not take, kept for a later run: a
/// hash of batch id to a short summary (in the kind's database)...
pub fn parked_index_key(kind: EventKind) -> String {
    format!("flit:upload:parked:{}", kind.name())
}

/// ...and each one's manifest.
pub fn parked_manifest_key(kind: EventKind, batch_id: &str) -> String {
    format!("flit:upload:parked:{}:{batch_id}", kind.name())
}

/// Versions that batches (in flight or parked) have read and will upload:
/// a hash with fields `<sha1 of the value>:<record key>` (see take_page.lua).
pub fn claims_key(kind: EventKind) -> String {
    format!("flit:upload:claims:{}", kind.name())
}

/// The uploaded index: which version of each kept record the warehouse has
/// (layout 4). A hash in the kind's database: field = record id, value =
/// the version's SHA-1 (40 hex digits) followed by the upload time (Unix
/// seconds). Written by settling, one HSET per slice, so keeping a record
/// costs no key of its own; read by the take (a stale entry of an uploaded
/// version is not taken again) and by ingest's rare path (is the current
/// version uploaded?). Older versions of a reused id go to the per-record
/// marks (`uploaded_mark_prefix`); fields older than a TTL are swept.
pub fn uploaded_index_key(kind: EventKind) -> String {
    format!("flit:uploaded:{}", kind.name())
}

/// Where the sweep of the uploaded index stands: the HSCAN cursor it
/// resumes from (sweep_uploaded.lua).
pub fn uploaded_sweep_key(kind: EventKind) -> String {
    format!("flit:uploaded:sweep:{}", kind.name())
}

/// Records of `kind` stored during one hour (`<hour>`: hours since the Unix
/// epoch, by Redis's clock): a counter the commit adds to, expiring after 25
/// hours, which `monitor` sums to project the memory records will take.
pub fn stored_per_hour_prefix(kind: EventKind) -> String {
    format!("flit:stored:{}:", kind.name())
}

/// Load jobs started for `kind`'s table in the last 24 hours: a sorted set
/// scored by start time in ms (see upload_budget.rs).
pub fn load_jobs_key(kind: EventKind) -> String {
    format!("flit:upload:load_jobs:{}", kind.name())
}

/// The stream field that carries the event's JSON.
pub const DATA_FIELD: &str = "data";

/// The two kinds of event the pipeline carries. Each kind has its own stream,
/// its own Redis database and its own warehouse table.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    #[value(name = "transactions")]
    #[serde(rename = "transactions")]
    Transaction,
    #[value(name = "predictions")]
    #[serde(rename = "predictions")]
    Prediction,
}

impl EventKind {
    pub const ALL: [EventKind; 2] = [EventKind::Transaction, EventKind::Prediction];

    /// Plural name used on the command line, in spool files and in logs.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Transaction => "transactions",
            EventKind::Prediction => "predictions",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// Incoming events of this kind.
    pub fn stream(self) -> &'static str {
        match self {
            EventKind::Transaction => "stream:transactions",
            EventKind::Prediction => "stream:predictions",
        }
    }

    /// Events of this kind that could not be accepted, with their reason.
    pub fn dead_letter_stream(self) -> &'static str {
        match self {
            EventKind::Transaction => "stream:transactions:dead",
            EventKind::Prediction => "stream:predictions:dead",
        }
    }

    /// How many dead letters of this kind the stream's cap has removed (a
    /// counter beside the dead-letter stream, in the kind's database).
    pub fn dead_letters_trimmed_key(self) -> &'static str {
        match self {
            EventKind::Transaction => "flit:dead_letters_trimmed:transactions",
            EventKind::Prediction => "flit:dead_letters_trimmed:predictions",
        }
    }

    /// Prefix of the cached record key: `tx:{id}` / `pred:{id}`.
    pub fn record_prefix(self) -> &'static str {
        match self {
            EventKind::Transaction => "tx:",
            EventKind::Prediction => "pred:",
        }
    }

    /// Prefix of keys holding an older, not yet uploaded version of a record
    /// whose id was reused: `tx@{sha1 of payload}:{id}`. The `@` can never
    /// follow `tx` in a record key, and the digest has a fixed length, so
    /// these keys cannot collide with record keys or with each other.
    pub fn superseded_prefix(self) -> &'static str {
        match self {
            EventKind::Transaction => "tx@",
            EventKind::Prediction => "pred@",
        }
    }

    /// Prefix of the uploaded marks: `tx!{id}` is a hash whose fields are
    /// the SHA-1s of versions of record `id` already uploaded (value: the
    /// upload time, Unix seconds), expiring a TTL after the last upload,
    /// never before the record. Layouts 2 and 3 marked every uploaded
    /// record here; from layout 4 only the rare versions the uploaded index
    /// cannot hold are (an older version of a reused id, one moved aside or
    /// gone), and the marks of earlier layouts are still read. A mark
    /// lives beside the record, never inside it, so the record stays the
    /// event's JSON for a plain GET. The `!` can never follow `tx` in a
    /// record key or a superseded-version key.
    pub fn uploaded_mark_prefix(self) -> &'static str {
        match self {
            EventKind::Transaction => "tx!",
            EventKind::Prediction => "pred!",
        }
    }

    pub fn uploaded_mark_key(self, id: &str) -> String {
        format!("{}{id}", self.uploaded_mark_prefix())
    }

    pub fn record_key(self, id: &str) -> String {
        format!("{}{id}", self.record_prefix())
    }

    /// The record id named by a record key or a superseded-version key.
    pub fn id_of_key(self, key: &str) -> Option<&str> {
        if let Some(id) = key.strip_prefix(self.record_prefix()) {
            return Some(id);
        }
        // superseded: prefix, 40 hex digits, ':', id
        let rest = key.strip_prefix(self.superseded_prefix())?;
        rest.get(41..)
            .filter(|_| rest.as_bytes().get(40) == Some(&b':'))
    }

    /// The field of the event that carries its id.
    pub fn id_field(self) -> &'static str {
        match self {
            EventKind::Transaction => "transaction_id",
            EventKind::Prediction => "prediction_id",
        }
    }

    /// The event-time field; the warehouse partitions on it.
    pub fn timestamp_field(self) -> &'static str {
        match self {
            EventKind::Transaction => "_timestamp",
            EventKind::Prediction => "prediction_timestamp",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(EventKind::from_name("tx"), None);
    }

    #[test]
    fn keys_follow_the_design() {
        assert_eq!(EventKind::Transaction.record_key("tx_1"), "tx:tx_1");
        assert_eq!(EventKind::Prediction.record_key("p"), "pred:p");
        assert_eq!(EventKind::Transaction.uploaded_mark_key("t"), "tx!t");
        assert_eq!(
            uploaded_index_key(EventKind::Prediction),
            "flit:uploaded:predictions"
        );
        assert_eq!(
            EventKind::Prediction.dead_letter_stream(),
            "stream:predictions:dead"
        );
    }
}
