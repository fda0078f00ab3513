//! `UploadQueue`: one kind's queue of records waiting for the warehouse, and
//! the protocol that drains it without losing or doubling a record. Every
//! key it touches lives in the kind's own database, so each step is one
//! atomic script there, and each script call is short (about a millisecond
//! of Redis time: pages and slices of a few hundred records).
//!
//! 1. `take_batch` reads the head of the queue in short pages, bounded in
//!    rows, bytes and partitions, claiming each version it reads and
//!    appending it (key and value) to the taking list (take_page.lua). Then
//!    one step saves the in-flight manifest (positions into that list, not
//!    payloads), takes the entries read off the queue and makes the taking
//!    list the batch's entries list.
//! 2. The warehouse writes the batch; sinks are idempotent per batch id.
//!    When it refuses rows, the manifest records the split first (`save`).
//! 3. `settle` settles the batch in slices (`settle_slice.lua`: claims
//!    released, records kept and their versions recorded in the uploaded
//!    index, or removed; dead letters written; a slice run twice touches
//!    only versions its batch still claims, and a cursor counts the expired
//!    entries done), then removes the manifest, the cursor and the entries
//!    list in a last step, and sweeps a stretch of the uploaded index.
//!    None of it touches the queue.
//!
//! A batch the warehouse does not take is `park`ed: its manifest moves to
//! the parked ones, so the queue behind it goes on; later runs retry it
//! first. A crash anywhere leaves a manifest behind (in flight or parked)
//! or a taking list whose entries never left the queue; the next run writes
//! that same batch again from its entries list (a no-op where it had
//! landed) and settles it. An in-flight batch of manifest format 2 or
//! before, whose entries still head the queue, is parked first
//! (`adopt_old_in_flight`), which takes them off.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use redis::aio::MultiplexedConnection;

use super::dead_letters::DeadLetterSettings;
use super::dead_letters::KeptBody;
use super::manifest::{
    BatchManifest, BatchRecord, InvalidRecord, MANIFEST_FORMAT, ManifestHead, ParkedSummary,
};
use super::scripts;
use super::upload_lock::Fence;
use crate::event::Rejection;
use crate::keys::{
    EventKind, UPLOAD_QUEUE, batch_entries_key, claims_key, parked_index_key, parked_manifest_key,
    settle_cursor_key, taking_key, upload_manifest_key, uploaded_index_key, uploaded_sweep_key,
};
use crate::warehouse::rows::{self, Row};

/// What becomes of a record once the warehouse has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterUpload {
    /// It stays readable by id for the rest of its TTL, its version
    /// recorded in the uploaded index, so a late copy of it is recognised
    /// and never uploaded again.
    Keep,
    /// It leaves Redis (the record and its queue entry).
    Remove,
}

/// Payload bytes aimed at per take page; the number of entries per page
/// follows from the sizes seen so far, so a page stays near this size (and
/// its call near a millisecond) whether events are 300 bytes or 100 KiB.
const PAGE_BYTES: usize = 64 << 10;
/// Entries in the first page, before any size is known, and the most per
/// page (about a millisecond of Redis time for small records).
const FIRST_PAGE: usize = 32;
const MAX_PAGE: usize = 200;
/// Elements of an entries list read per round trip when a recovered batch
/// is read back.
const ENTRIES_PER_READ: usize = 512;
/// Records per call of the scripts that go through a batch in slices
/// (settling it, renewing its TTLs): about a millisecond of Redis
/// time each.
const RECORDS_PER_CALL: usize = 200;
/// Fields of the uploaded index each sweep call visits (HSCAN's COUNT):
/// a few hundred microseconds of Redis time.
const SWEEP_PER_CALL: usize = 500;

/// Why a batch's manifest was not where this run expected it: another run
/// settled it, or holds the kind. The run stops without writing.
fn taken_over(batch_id: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "batch {batch_id}: its manifest is gone or names another batch; another run settled it or \
         holds this kind (was the upload lock lost?); stopping without writing"
    )
}

/// What settling a batch changed in Redis.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// Uploaded records settled (kept and recorded, or removed).
    pub removed: u64,
    pub dead_lettered: u64,
    /// Entries whose record was gone, now dead-lettered `expired`.
    pub expired: u64,
}

/// Whether the records of a batch being saved just had their TTLs renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    Renewed,
    Unchanged,
}

/// Why `take_batch` reads the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// For upload: the batch becomes the in-flight manifest.
    Upload,
    /// For a dry run: nothing is written; `skip` entries are passed over.
    Look { skip: usize },
}

pub struct UploadQueue {
    kind: EventKind,
    /// The kind's database: records, queue, manifests.
    records: MultiplexedConnection,
    /// Database 0, where today's binary kept the in-flight manifest.
    state: MultiplexedConnection,
    dead_letters: DeadLetterSettings,
    /// Whether settling keeps uploaded records (recorded in the uploaded
    /// index) or removes them.
    after_upload: AfterUpload,
    /// The records' TTL: how long a record's upload can matter.
    ttl_seconds: u64,
    /// The run's hold on the kind's upload lock, checked by every script
    /// that writes.
    fence: Fence,
}

impl UploadQueue {
    pub fn new(
        kind: EventKind,
        records: MultiplexedConnection,
        state: MultiplexedConnection,
        dead_letters: DeadLetterSettings,
        after_upload: AfterUpload,
        ttl_seconds: u64,
        fence: Fence,
    ) -> Self {
        UploadQueue {
            kind,
            records,
            state,
            dead_letters,
            after_upload,
            ttl_seconds,
            fence,
        }
    }

    /// Fails unless the run still holds the kind's lock. Asked right before
    /// each warehouse write, which no Redis script can fence: it narrows the
    /// window in which a run that lost the lock still writes to the
    /// warehouse to the write's own duration.
    pub async fn check_fence(&mut self) -> anyhow::Result<()> {
        let holder: Option<String> = redis::cmd("GET")
            .arg(&self.fence.key)
            .query_async(&mut self.records)
            .await?;
        if holder.as_deref() != Some(self.fence.token.as_str()) || self.fence.token.is_empty() {
            anyhow::bail!(
                "FENCED this run no longer holds {}; stopping before the warehouse write",
                self.fence.key
            );
        }
        Ok(())
    }

    pub async fn len(&mut self) -> redis::RedisResult<u64> {
        queued(&mut self.records).await
    }

    /// Moves an in-flight manifest left in database 0 by an earlier version
    /// beside the kind's own keys. Safe to repeat: it is copied only where
    /// none is, then removed from the old place.
    pub async fn take_over_old_manifest(&mut self, same_database: bool) -> anyhow::Result<()> {
        if same_database {
            return Ok(());
        }
        let key = upload_manifest_key(self.kind);
        let old: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut self.state)
            .await?;
        if let Some(text) = old {
            tracing::info!(kind = %self.kind, "taking over the in-flight batch an earlier version left in database 0");
            let () = scripts::TAKE_OVER
                .key(&key)
                .key(&self.fence.key)
                .arg(text)
                .arg(&self.fence.token)
                .invoke_async(&mut self.records)
                .await?;
            redis::cmd("DEL")
                .arg(&key)
                .exec_async(&mut self.state)
                .await?;
        }
        Ok(())
    }

    /// Releases claims that no manifest (in flight or parked) owns: left by
    /// an upload killed between claiming and saving its manifest. Called at
    /// the start of a run, under the lock, before any batch is taken.
    pub async fn release_orphan_claims(&mut self) -> anyhow::Result<u64> {
        let claimed: Vec<String> = redis::cmd("HKEYS")
            .arg(claims_key(self.kind))
            .query_async(&mut self.records)
            .await?;
        if claimed.is_empty() {
            return Ok(0);
        }
        let mut owned: HashSet<String> = HashSet::new();
        let mut manifests: Vec<BatchManifest> = self.in_flight().await?.into_iter().collect();
        for summary in self.parked_summaries().await? {
            // A parked batch that cannot be read back stops the run: its
            // claims cannot be told from orphans, and a claim left in place
            // would make the take drop its entry.
            manifests.extend(self.parked(&summary.batch_id).await?);
        }
        for manifest in &manifests {
            let records = manifest
                .records
                .iter()
                .chain(manifest.invalid.iter().map(|i| &i.record));
            owned.extend(records.map(|r| format!("{}:{}", r.digest(), r.key)));
        }
        let orphans: Vec<&String> = claimed.iter().filter(|c| !owned.contains(*c)).collect();
        if orphans.is_empty() {
            return Ok(0);
        }
        // In slices, so no call runs long (each claim released is undone
        // on its own, so a crash between slices leaves the rest for later).
        let script = &scripts::RELEASE_CLAIMS;
        let mut requeued = 0u64;
        for slice in orphans.chunks(RECORDS_PER_CALL) {
            let moved: u64 = script
                .key(UPLOAD_QUEUE)
                .key(claims_key(self.kind))
                .key(&self.fence.key)
                .arg(self.kind.superseded_prefix())
                .arg(self.kind.record_prefix())
                .arg(slice)
                .arg(&self.fence.token)
                .invoke_async(&mut self.records)
                .await?;
            requeued += moved;
        }
        tracing::warn!(kind = %self.kind, orphans = orphans.len(), requeued,
            "released claims of an upload that died before saving its batch");
        Ok(orphans.len() as u64)
    }

    /// The batch a previous run left in flight, if any, read back whole.
    pub async fn in_flight(&mut self) -> anyhow::Result<Option<BatchManifest>> {
        let key = upload_manifest_key(self.kind);
        self.manifest_at(&key).await
    }

    /// Entries the in-flight batch took off the queue: with the queue's
    /// length, what waits for upload. Counted from the manifest without
    /// reading its records back.
    pub async fn in_flight_entries(&mut self) -> anyhow::Result<u64> {
        Ok(match in_flight_head(&mut self.records, self.kind).await? {
            Some(head) if !head.entries_in_queue() => head.entries() as u64,
            _ => 0,
        })
    }

    /// Summaries of the parked batches, oldest first.
    pub async fn parked_summaries(&mut self) -> anyhow::Result<Vec<ParkedSummary>> {
        Ok(parked_summaries(&mut self.records, self.kind).await?)
    }

    /// A parked batch's manifest, read back whole.
    pub async fn parked(&mut self, batch_id: &str) -> anyhow::Result<Option<BatchManifest>> {
        let key = parked_manifest_key(self.kind, batch_id);
        self.manifest_at(&key).await
    }

    /// Parks an in-flight batch of manifest format 2 or before, whose
    /// entries still head the queue (an earlier version cut it): parking
    /// takes them off, so from then on nothing settles through the queue.
    /// Returns whether there was one. The run retries it with the parked.
    pub async fn adopt_old_in_flight(&mut self) -> anyhow::Result<bool> {
        let Some(mut manifest) = self.in_flight().await? else {
            return Ok(false);
        };
        if !manifest.entries_in_queue() {
            return Ok(false);
        }
        tracing::info!(kind = %self.kind, batch = %manifest.batch_id,
            "an earlier version left this batch in flight at the head of the queue; parking it to retry it first");
        self.park(&mut manifest).await?;
        Ok(true)
    }

    /// Reads the manifest at `key` and, for records stored as positions
    /// (format 3), their keys and values from the batch's entries list, in
    /// pages: exactly what the take read, whatever happened to the record
    /// keys since.
    async fn manifest_at(&mut self, key: &str) -> anyhow::Result<Option<BatchManifest>> {
        let text: Option<String> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.records)
            .await?;
        let Some(text) = text else {
            return Ok(None);
        };
        let mut manifest = read_manifest(key, &text)?;
        let mut wanted: Vec<&mut BatchRecord> = manifest
            .records
            .iter_mut()
            .chain(manifest.invalid.iter_mut().map(|i| &mut i.record))
            .filter(|r| r.at.is_some())
            .collect();
        if wanted.is_empty() {
            return Ok(Some(manifest));
        }
        let list = batch_entries_key(self.kind, &manifest.batch_id);
        let mut entries: Vec<Vec<u8>> = Vec::new();
        loop {
            let page: Vec<Vec<u8>> = redis::cmd("LRANGE")
                .arg(&list)
                .arg(entries.len())
                .arg(entries.len() + ENTRIES_PER_READ - 1)
                .query_async(&mut self.records)
                .await?;
            let last = page.len() < ENTRIES_PER_READ;
            entries.extend(page);
            if last {
                break;
            }
        }
        for record in wanted.iter_mut() {
            let at = record.at.unwrap_or_default();
            let (Some(entry_key), Some(value)) = (entries.get(2 * at), entries.get(2 * at + 1))
            else {
                anyhow::bail!(
                    "{key}: batch {} names entry {at} of {list}, which holds {} entries; \
                     the entries list was changed by hand (nothing was changed)",
                    manifest.batch_id,
                    entries.len() / 2
                );
            };
            record.key = String::from_utf8_lossy(entry_key).into_owned();
            record.id = self
                .kind
                .id_of_key(&record.key)
                .unwrap_or_default()
                .to_owned();
            let stored = StoredText::of(value.clone());
            record.payload = stored.text;
            record.stored_sha1 = stored.stored_sha1;
        }
        Ok(Some(manifest))
    }

    /// Keeps the manifest's progress (a split, a failure) where it lives;
    /// `ttl` says whether its records' TTLs were just renewed.
    pub async fn save(&mut self, manifest: &BatchManifest, ttl: Ttl) -> anyhow::Result<()> {
        let text = serde_json::to_string(manifest)?;
        let saved: u8 = if manifest.queued {
            scripts::SAVE_IN_FLIGHT
                .key(upload_manifest_key(self.kind))
                .key(&self.fence.key)
                .arg(&manifest.batch_id)
                .arg(text)
                .arg(&self.fence.token)
                .invoke_async(&mut self.records)
                .await?
        } else {
            let summary = self.summary_of(manifest, ttl).await?;
            scripts::SAVE_PARKED
                .key(parked_manifest_key(self.kind, &manifest.batch_id))
                .key(parked_index_key(self.kind))
                .key(&self.fence.key)
                .arg(&manifest.batch_id)
                .arg(text)
                .arg(serde_json::to_string(&summary)?)
                .arg(&self.fence.token)
                .invoke_async(&mut self.records)
                .await?
        };
        match saved {
            1 => Ok(()),
            _ => Err(taken_over(&manifest.batch_id)),
        }
    }

    async fn summary_of(
        &mut self,
        manifest: &BatchManifest,
        ttl: Ttl,
    ) -> anyhow::Result<ParkedSummary> {
        let earlier = self
            .parked_summaries()
            .await?
            .into_iter()
            .find(|s| s.batch_id == manifest.batch_id);
        let mut summary = ParkedSummary::of(manifest, Utc::now());
        if let Some(earlier) = earlier {
            summary.parked_at = earlier.parked_at;
            if ttl == Ttl::Unchanged {
                summary.renewed_at = earlier.renewed_at;
            }
        }
        Ok(summary)
    }

    /// Parks an in-flight batch the warehouse did not take: its manifest
    /// joins the parked ones (and, cut by an earlier version, its entries
    /// leave the queue), in one step.
    pub async fn park(&mut self, manifest: &mut BatchManifest) -> anyhow::Result<()> {
        let in_queue = manifest.entries_in_queue();
        manifest.queued = false;
        let summary = ParkedSummary::of(manifest, Utc::now());
        let queue_keys: Vec<&str> = match in_queue {
            true => manifest.queue_keys().collect(),
            false => Vec::new(),
        };
        let script = &scripts::PARK;
        let mut invocation = script.prepare_invoke();
        invocation
            .key(UPLOAD_QUEUE)
            .key(upload_manifest_key(self.kind))
            .key(parked_manifest_key(self.kind, &manifest.batch_id))
            .key(parked_index_key(self.kind))
            .arg(&manifest.batch_id)
            .arg(serde_json::to_string(manifest)?)
            .arg(serde_json::to_string(&summary)?)
            .key(&self.fence.key)
            .arg(queue_keys.len())
            .arg(&queue_keys)
            .arg(&self.fence.token);
        let trimmed: i64 = invocation.invoke_async(&mut self.records).await?;
        if trimmed < 0 {
            return Err(taken_over(&manifest.batch_id));
        }
        Ok(())
    }

    /// One page of the queue from `start`: each entry's key, its record's
    /// bytes (none when it expired), and whether that version was uploaded
    /// already (a stale entry). For an upload the versions read are claimed
    /// by `batch_id` in the same script (take_page.lua), which stops at
    /// `budget` bytes too, so a page of large records is still a short call.
    /// Bytes, not text: a value that is not UTF-8 (set by hand past the
    /// door) is one bad record, not a batch that never loads.
    async fn read_page(
        &mut self,
        take: Take,
        start: usize,
        page: usize,
        budget: usize,
        batch_id: &str,
    ) -> anyhow::Result<Vec<(String, Option<Vec<u8>>, u8)>> {
        Ok(match take {
            Take::Upload => {
                scripts::TAKE_PAGE
                    .key(UPLOAD_QUEUE)
                    .key(claims_key(self.kind))
                    .key(taking_key(self.kind))
                    .key(uploaded_index_key(self.kind))
                    .key(crate::keys::LAYOUT)
                    .key(&self.fence.key)
                    .arg(start)
                    .arg(page)
                    .arg(budget)
                    .arg(self.kind.record_prefix())
                    .arg(self.kind.superseded_prefix())
                    .arg(self.kind.uploaded_mark_prefix())
                    .arg(batch_id)
                    .arg(super::layout::LAYOUT_VERSION)
                    .arg(&self.fence.token)
                    .invoke_async(&mut self.records)
                    .await?
            }
            Take::Look { .. } => {
                let keys: Vec<String> = redis::cmd("LRANGE")
                    .arg(UPLOAD_QUEUE)
                    .arg(start)
                    .arg(start + page - 1)
                    .query_async(&mut self.records)
                    .await?;
                if keys.is_empty() {
                    Vec::new()
                } else {
                    let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                        .arg(&keys)
                        .query_async(&mut self.records)
                        .await?;
                    keys.into_iter()
                        .zip(values)
                        .map(|(key, value)| (key, value, 0))
                        .collect()
                }
            }
        })
    }

    /// Reads the next batch from the head of the queue. For an upload it
    /// becomes the in-flight manifest, and the versions it read are claimed
    /// by it in the same step as they are read (take_page.lua). Returns the
    /// rows of its records too, built once while checking them with the
    /// door's rules.
    pub async fn take_batch(
        &mut self,
        take: Take,
        max_rows: usize,
        max_bytes: usize,
    ) -> anyhow::Result<(BatchManifest, Vec<Row>)> {
        let mut manifest = BatchManifest::new(self.kind);
        let ingested_at = manifest.ingested_at;
        let mut seen: HashMap<String, Option<String>> = HashMap::new();
        let mut rows = Vec::new();
        let mut bytes = 0usize;
        let mut start = match take {
            Take::Upload => 0,
            Take::Look { skip } => skip,
        };
        // Versions appended to the taking list so far.
        let mut pushed = 0usize;
        while manifest.records.len() + manifest.invalid.len() < max_rows && bytes < max_bytes {
            let read = manifest.records.len() + manifest.invalid.len();
            let page = match bytes.checked_div(read) {
                Some(average) if average > 0 => (PAGE_BYTES / average).clamp(FIRST_PAGE, MAX_PAGE),
                _ => FIRST_PAGE,
            }
            .min(max_rows - read);
            let budget = (max_bytes - bytes).min(PAGE_BYTES);
            let entries = self
                .read_page(take, start, page, budget, &manifest.batch_id)
                .await?;
            if entries.is_empty() {
                break;
            }
            start += entries.len();
            for (key, payload, taken) in entries {
                if taken == 1 {
                    manifest.repeated.push(key);
                    continue;
                }
                // Its pair in the taking list (take_page.lua appends each
                // version it claims: every value answered with taken 0).
                let at = match (take, &payload) {
                    (Take::Upload, Some(_)) => {
                        pushed += 1;
                        Some(pushed - 1)
                    }
                    _ => None,
                };
                // A key met again is a repeat only with the same content: a
                // newer version may have taken the key between two pages,
                // with an entry of its own, and it is a record of its own.
                let digest = payload
                    .as_deref()
                    .map(|p| sha1_smol::Sha1::from(p).digest().to_string());
                match seen.get(&key) {
                    Some(earlier) if *earlier == digest => {
                        manifest.repeated.push(key);
                        continue;
                    }
                    // Gone at its first entry, stored again by its second:
                    // the first entry was no expiry, just a stale entry.
                    Some(None) => {
                        if let Some(at) = manifest.expired.iter().position(|k| *k == key) {
                            manifest.repeated.push(manifest.expired.remove(at));
                        }
                    }
                    _ => {}
                }
                seen.insert(key.clone(), digest);
                let Some(payload) = payload else {
                    manifest.expired.push(key);
                    continue;
                };
                bytes += payload.len();
                let id = self.kind.id_of_key(&key).unwrap_or_default().to_owned();
                let stored = StoredText::of(payload);
                let row = match &stored.not_utf8 {
                    None => rows::to_row(self.kind, &stored.text, ingested_at),
                    Some(why) => Err(Rejection::InvalidJson(format!("not UTF-8 ({why})"))),
                };
                let record = BatchRecord {
                    key,
                    id,
                    payload: stored.text,
                    stored_sha1: stored.stored_sha1,
                    at,
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
            }
        }
        if take == Take::Upload && !manifest.is_empty() {
            let started: u8 = scripts::START_IN_FLIGHT
                .key(upload_manifest_key(self.kind))
                .key(UPLOAD_QUEUE)
                .key(taking_key(self.kind))
                .key(batch_entries_key(self.kind, &manifest.batch_id))
                .key(&self.fence.key)
                .arg(serde_json::to_string(&manifest)?)
                .arg(start)
                .arg(pushed)
                .arg(&self.fence.token)
                .invoke_async(&mut self.records)
                .await?;
            if started != 1 {
                return Err(taken_over(&manifest.batch_id));
            }
        }
        Ok((manifest, rows))
    }

    /// Whether Redis is near its maxmemory (90%, where `monitor` raises
    /// `memory_near_limit`): uploaded records are then removed instead of
    /// kept, since they are what an upload can free, and a full Redis must
    /// drain through uploads (they are in the warehouse already). A Redis
    /// that refuses INFO (a managed one, an ACL) counts as not pressed:
    /// settling must not fail for it.
    async fn memory_pressed(&mut self) -> bool {
        let info: redis::RedisResult<redis::InfoDict> = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut self.records)
            .await;
        let info = match info {
            Ok(info) => info,
            Err(err) => {
                tracing::warn!(kind = %self.kind, error = %err,
                    "cannot read Redis's memory use; settling as configured");
                return false;
            }
        };
        let used: u64 = info.get("used_memory").unwrap_or(0);
        let max: u64 = info.get("maxmemory").unwrap_or(0);
        max > 0 && used * 10 >= max * 9
    }

    /// Settles a written batch in slices (claims released, records kept and
    /// recorded in the uploaded index, or removed; dead letters written),
    /// then removes its manifest, cursor and entries list, and sweeps a
    /// stretch of the uploaded index. Every step is short and safe to
    /// repeat; none touches the queue.
    pub async fn settle(&mut self, manifest: &BatchManifest) -> anyhow::Result<Settled> {
        if manifest.entries_in_queue() {
            anyhow::bail!(
                "batch {}: its entries still head the queue (an earlier version cut it); \
                 it must be parked before it is settled",
                manifest.batch_id
            );
        }
        // Near maxmemory the records themselves give way (the uploaded
        // index still records them: a late copy is recognised at the take).
        let pressed = self.after_upload == AfterUpload::Keep && self.memory_pressed().await;
        let stays = match self.after_upload {
            AfterUpload::Remove => "remove",
            AfterUpload::Keep if pressed => {
                tracing::warn!(kind = %self.kind, batch = %manifest.batch_id,
                    "Redis is at 90% of maxmemory: the uploaded records leave Redis instead of staying (the uploaded index still records them)");
                "remove-marked"
            }
            AfterUpload::Keep => "keep",
        };
        let manifest_key = match manifest.queued {
            true => upload_manifest_key(self.kind),
            false => parked_manifest_key(self.kind, &manifest.batch_id),
        };
        let cursor = settle_cursor_key(self.kind, &manifest.batch_id);
        let mut total = Settled::default();
        let mut first = 0usize;
        for slice in settle_items(manifest, self.dead_letters.keep_bytes).chunks(RECORDS_PER_CALL) {
            let mut invocation = scripts::SETTLE_SLICE.prepare_invoke();
            invocation
                .key(&manifest_key)
                .key(&cursor)
                .key(self.kind.dead_letter_stream())
                .key(self.kind.dead_letters_trimmed_key())
                .key(claims_key(self.kind))
                .key(UPLOAD_QUEUE)
                .key(uploaded_index_key(self.kind))
                .key(&self.fence.key)
                .arg(&manifest.batch_id)
                .arg(self.kind.superseded_prefix())
                .arg(stays)
                .arg(self.dead_letters.max_len)
                .arg(first)
                .arg(if manifest.may_lack_claims() {
                    "unclaimed"
                } else {
                    "claimed"
                })
                .arg(self.kind.uploaded_mark_prefix())
                .arg(self.ttl_seconds);
            for item in slice {
                item.push_args(&mut invocation);
            }
            let counts: Vec<i64> = invocation
                .arg(&self.fence.token)
                .invoke_async(&mut self.records)
                .await?;
            match counts[..] {
                [settled, _moved, dead_lettered, expired] if settled >= 0 => {
                    total.removed += settled as u64;
                    total.dead_lettered += dead_lettered as u64;
                    total.expired += expired as u64;
                }
                _ => return Err(taken_over(&manifest.batch_id)),
            }
            first += slice.len();
        }
        let done: u8 = scripts::SETTLE_DONE
            .key(&manifest_key)
            .key(&cursor)
            .key(batch_entries_key(self.kind, &manifest.batch_id))
            .key(parked_index_key(self.kind))
            .key(&self.fence.key)
            .arg(&manifest.batch_id)
            .arg(if manifest.queued { "queued" } else { "parked" })
            .arg(&self.fence.token)
            .invoke_async(&mut self.records)
            .await?;
        if done != 1 {
            return Err(taken_over(&manifest.batch_id));
        }
        // The batch is settled: a sweep that fails is retried by the next
        // batch's, and must not make this one look failed.
        if let Err(err) = self.sweep_uploaded(2 * manifest.records.len()).await {
            tracing::warn!(kind = %self.kind, error = %err,
                "could not sweep the uploaded index; the next batch sweeps it");
        }
        Ok(total)
    }

    /// Visits about `fields` fields of the uploaded index from where the
    /// last sweep stopped, removing those whose deadline has passed
    /// (sweep_uploaded.lua), in calls of a few hundred fields each.
    async fn sweep_uploaded(&mut self, fields: usize) -> redis::RedisResult<()> {
        let mut visited = 0usize;
        while visited < fields {
            let (seen, _removed, came_round): (usize, u64, u8) = scripts::SWEEP_UPLOADED
                .key(uploaded_index_key(self.kind))
                .key(uploaded_sweep_key(self.kind))
                .key(&self.fence.key)
                .arg(SWEEP_PER_CALL)
                .arg(&self.fence.token)
                .invoke_async(&mut self.records)
                .await?;
            if came_round == 1 {
                break;
            }
            // HSCAN may answer an empty stretch; count the call as a visit.
            visited += seen.max(SWEEP_PER_CALL / 4);
        }
        Ok(())
    }

    /// Gives a batch that could not be uploaded a full TTL again, so its
    /// records cannot expire while they wait for the next run. Each
    /// version is renewed where it is (its record key, or the key ingest
    /// moved it to when a newer version came), never a newer version in its
    /// place: that one may be uploaded and marked already, and must not
    /// outlive its mark.
    pub async fn extend_ttl(
        &mut self,
        manifest: &BatchManifest,
        ttl_seconds: u64,
    ) -> redis::RedisResult<()> {
        for slice in manifest.records.chunks(RECORDS_PER_CALL) {
            let mut invocation = scripts::RENEW_TTL.prepare_invoke();
            invocation
                .arg(ttl_seconds)
                .arg(self.kind.superseded_prefix());
            for record in slice {
                invocation
                    .arg(&record.key)
                    .arg(&record.id)
                    .arg(record.digest());
            }
            let () = invocation.invoke_async(&mut self.records).await?;
        }
        Ok(())
    }
}

/// One thing settling does for a batch (see settle_slice.lua). Expired
/// items come first: they are fixed when the batch is taken, so their
/// positions, which the settle cursor counts, are the same every time the
/// batch is settled; the others act only while their batch claims them.
enum SettleItem<'a> {
    Uploaded(&'a BatchRecord),
    Dead(&'a InvalidRecord, KeptBody),
    Expired(&'a str),
}

impl SettleItem<'_> {
    fn push_args(&self, invocation: &mut redis::ScriptInvocation<'_>) {
        match self {
            SettleItem::Uploaded(record) => {
                invocation
                    .arg("u")
                    .arg(&record.key)
                    .arg(&record.id)
                    .arg(record.digest());
            }
            SettleItem::Dead(invalid, kept) => {
                let record = &invalid.record;
                invocation
                    .arg("d")
                    .arg(&record.key)
                    .arg(&record.id)
                    .arg(record.digest())
                    .arg(&invalid.code)
                    .arg(&invalid.reason)
                    .arg(&kept.data)
                    .arg(kept.size)
                    .arg(if kept.truncated { "1" } else { "0" });
            }
            SettleItem::Expired(key) => {
                invocation.arg("e").arg(*key);
            }
        }
    }
}

/// What settling `manifest` does, item by item. A repeated entry needs
/// nothing: it left the queue with the batch.
fn settle_items(manifest: &BatchManifest, keep_bytes: usize) -> Vec<SettleItem<'_>> {
    let uploaded = manifest.records.iter().map(SettleItem::Uploaded);
    let dead = manifest.invalid.iter().map(|invalid| {
        let kept = KeptBody::new(invalid.record.payload.as_bytes(), keep_bytes);
        SettleItem::Dead(invalid, kept)
    });
    let expired = manifest.expired.iter().map(|key| SettleItem::Expired(key));
    expired.chain(uploaded).chain(dead).collect()
}

/// A stored value as a batch carries it: its text, and when it is not
/// UTF-8 (set by hand past the door: one bad record, not a batch that
/// never loads) a lossy text, the SHA-1 of the bytes as stored, and why.
struct StoredText {
    text: String,
    stored_sha1: Option<String>,
    not_utf8: Option<std::str::Utf8Error>,
}

impl StoredText {
    fn of(value: Vec<u8>) -> Self {
        match String::from_utf8(value) {
            Ok(text) => StoredText {
                text,
                stored_sha1: None,
                not_utf8: None,
            },
            Err(err) => StoredText {
                text: String::from_utf8_lossy(err.as_bytes()).into_owned(),
                stored_sha1: Some(sha1_smol::Sha1::from(err.as_bytes()).digest().to_string()),
                not_utf8: Some(err.utf8_error()),
            },
        }
    }
}

fn read_manifest(key: &str, text: &str) -> anyhow::Result<BatchManifest> {
    let manifest: BatchManifest = serde_json::from_str(text)
        .map_err(|e| anyhow::anyhow!("{key} holds an unreadable manifest: {e}"))?;
    if manifest.format > MANIFEST_FORMAT {
        anyhow::bail!(
            "{key} holds a manifest of format {}, this flit-cache reads up to {MANIFEST_FORMAT}; \
             run the newer flit-cache (nothing was changed)",
            manifest.format
        );
    }
    Ok(manifest)
}

/// How many entries wait in the upload queue of `records`' database.
pub async fn queued(records: &mut MultiplexedConnection) -> redis::RedisResult<u64> {
    redis::cmd("LLEN")
        .arg(UPLOAD_QUEUE)
        .query_async(records)
        .await
}

/// Whether records of `kind` wait for an upload: queued, or in a batch in
/// flight (which has left the queue; an upload under way or the next run
/// frees it).
pub async fn waiting_for_upload(
    records: &mut MultiplexedConnection,
    kind: EventKind,
) -> redis::RedisResult<bool> {
    let (queued, in_flight): (u64, u64) = redis::pipe()
        .cmd("LLEN")
        .arg(UPLOAD_QUEUE)
        .cmd("EXISTS")
        .arg(upload_manifest_key(kind))
        .query_async(records)
        .await?;
    Ok(queued > 0 || in_flight > 0)
}

/// The head of `kind`'s in-flight manifest, if one is there and readable
/// (`monitor` reads this, never the records).
pub async fn in_flight_head(
    records: &mut MultiplexedConnection,
    kind: EventKind,
) -> redis::RedisResult<Option<ManifestHead>> {
    let text: Option<String> = redis::cmd("GET")
        .arg(upload_manifest_key(kind))
        .query_async(records)
        .await?;
    Ok(text.and_then(|text| serde_json::from_str(&text).ok()))
}

/// Summaries of `kind`'s parked batches, oldest first (`monitor` reads these,
/// never the manifests, which a batch of format 2 or before fills with every
/// payload, nor the entries lists).
pub async fn parked_summaries(
    records: &mut MultiplexedConnection,
    kind: EventKind,
) -> redis::RedisResult<Vec<ParkedSummary>> {
    let index: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(parked_index_key(kind))
        .query_async(records)
        .await?;
    let mut summaries: Vec<ParkedSummary> = index
        .into_iter()
        .filter_map(|(_, text)| serde_json::from_str(&text).ok())
        .collect();
    summaries.sort_by(|a, b| a.batch_id.cmp(&b.batch_id));
    Ok(summaries)
}

/// When a parked batch's records expire, at the soonest.
pub fn parked_expiry(summary: &ParkedSummary, ttl_seconds: u64) -> DateTime<Utc> {
    summary.renewed_at + chrono::TimeDelta::seconds(ttl_seconds as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_of_a_newer_format_is_refused_and_one_without_a_format_is_format_one() {
        let old = r#"{"batch_id":"b","kind":"predictions","ingested_at":"2026-11-23T00:00:00Z","records":[],"invalid":[],"expired":[],"repeated":[]}"#;
        let read = read_manifest("k", old).expect("an earlier binary's manifest");
        assert_eq!(read.format, 1);
        let mine = serde_json::to_string(&BatchManifest::new(EventKind::Prediction)).expect("json");
        assert!(mine.starts_with(r#"{"batch_id":""#), "{mine}");
        assert_eq!(
            read_manifest("k", &mine).expect("mine").format,
            MANIFEST_FORMAT
        );
        let newer = old.replace(r#""kind""#, r#""format":99,"kind""#);
        let err = read_manifest("flit:upload:inflight:predictions", &newer).expect_err("newer");
        assert!(err.to_string().contains("format 99"), "{err}");
    }
}
