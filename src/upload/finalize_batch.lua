-- Settles a batch the warehouse has confirmed, in the records' database:
-- uploaded records leave the queue and stay at their keys (marked uploaded
-- beside them by mark_uploaded.lua, run before this), or leave Redis
-- ('remove': FLIT_KEEP_UPLOADED=false, or Redis near maxmemory);
-- dead-lettered records leave Redis; queue entries whose record was gone are dropped,
-- and the batch's claims on the versions it read are released. A record
-- is touched only while it still holds the exact uploaded content.
-- Flags (allow-oom) and the lock check come from `fenced!` in queue.rs.
-- allow-oom: settling is what frees memory when Redis is full.
--
-- The batch's manifest goes in the same step, so a crash cannot leave a
-- settled batch behind to be settled again. A parked batch's entries have
-- already left the queue: only its records and manifest are removed.
--
-- KEYS: 1 upload queue, 2 dead-letter stream, 3 counter of dead letters
--       the cap trimmed, 4 the batch's manifest, 5 the parked index,
--       6 versions batches have claimed (a hash, see take_page.lua), 7 the
--       kind's upload lock
-- ARGV: 1 superseded prefix, 2 uploaded count, 3 dead count, 4 expired
--       count, 5 repeated count, 6 dead-letter cap, 7 'queued' or 'parked',
--       8 batch id, 9 'keep' or 'remove' (what becomes of an uploaded
--       record),
--       per uploaded: queue key, id, sha1 of payload
--       per dead:     queue key, id, sha1 of payload, reason code, reason,
--                     payload kept (a prefix when long), whole size,
--                     '1' when the kept payload is a prefix
--       per expired:  queue key (its record was gone when the batch was cut)
--       per repeated: queue key (a second entry for a key of the batch),
--       then the run's lock token
-- An expired record gets a dead letter (reason `expired`, no data), so each
-- one is accounted for by key, not only counted in the run report.
-- Returns {settled, moved_on, dead_lettered, expired_removed}, or {-1}
-- when the manifest is gone or names another batch: the batch was settled
-- already (or another run holds the kind), and settling it again could
-- drop a newer version's queue entry, so nothing is touched.

local prefix_of_manifest = '{"batch_id":"' .. ARGV[8] .. '"'
if redis.call('GETRANGE', KEYS[4], 0, #prefix_of_manifest - 1) ~= prefix_of_manifest then
  return {-1}
end
local queue, dead, trimmed_counter, claims = KEYS[1], KEYS[2], KEYS[3], KEYS[6]
local superseded = ARGV[1]
local uploaded, dead_count = tonumber(ARGV[2]), tonumber(ARGV[3])
local expired, repeated = tonumber(ARGV[4]), tonumber(ARGV[5])
local cap = tonumber(ARGV[6])
local queued = ARGV[7] == 'queued'
-- keep: an uploaded record stays at its key (its mark was written before,
-- mark_uploaded.lua); remove: it goes.
local keep = ARGV[9] == 'keep'
local settled, moved_on, dead_lettered, expired_removed = 0, 0, 0, 0

-- Queue entries to remove (key -> how many) and record keys to delete.
local unqueue, unqueue_total = {}, 0
local delete = {}
local function drop_entry(key)
  unqueue[key] = (unqueue[key] or 0) + 1
  unqueue_total = unqueue_total + 1
end

-- The batch's claims (see take_page.lua), released in slices at the end.
-- Whether a version is still claimed matters only when it left its key.
local release = {}

-- Settles the version of record `id` whose content hashes to `digest`:
-- `uploaded` when the warehouse took it (kept and marked, or removed), else
-- it was dead-lettered (removed). Returns true if it was still there.
local function settle(key, id, digest, uploaded)
  local field = digest .. ':' .. key
  release[#release + 1] = field
  local current = redis.call('GET', key)
  if current and redis.sha1hex(current) == digest then
    -- Kept only at the record key: an older version's own key goes, as
    -- lookups read the newest and the mark recognises a late copy.
    if not (uploaded and keep) or key:sub(1, #superseded) == superseded then
      delete[#delete + 1] = key
    end
    drop_entry(key)
    return true
  end
  -- Gone (expired), or a newer version took the key while this one was
  -- uploading: then ingest moved this one to a key of its own. Remove it
  -- (lookups read the newest; the mark recognises a late copy).
  local claimed = redis.call('HEXISTS', claims, field) == 1
  local moved = superseded .. digest .. ':' .. id
  local copy = redis.call('GET', moved)
  local found = copy and redis.sha1hex(copy) == digest
  if found then
    delete[#delete + 1] = moved
    moved_on = moved_on + 1
  end
  if not current or claimed then
    -- A dangling entry; or ingest saw the claim, so the moved copy was
    -- never queued and the newer version got an entry of its own.
    drop_entry(key)
  end
  if found and not claimed then
    -- A batch cut by an earlier version (no claims): the moved copy was
    -- queued, and the record key's entry is the newer version's.
    drop_entry(moved)
  end
  return found
end

local i = 10
for _ = 1, uploaded do
  if settle(ARGV[i], ARGV[i + 1], ARGV[i + 2], true) then settled = settled + 1 end
  i = i + 3
end
-- A dead letter is written from the manifest's copy while the batch still
-- claims the record, whether or not the record is still in Redis: one that
-- expired while its batch was parked is still accounted for. A manifest
-- without claims (an earlier version's) writes it only while the record is
-- there, as that version did, so settling such a manifest again (that
-- version removed it in a step of its own) doubles no dead letter.
for _ = 1, dead_count do
  local key, id, digest = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local claimed = redis.call('HEXISTS', claims, digest .. ':' .. key) == 1
  if settle(key, id, digest, false) or claimed then
    redis.call('XADD', dead, '*', 'reason_code', ARGV[i + 3], 'reason', ARGV[i + 4],
               'source_key', key, 'data', ARGV[i + 5], 'size', ARGV[i + 6],
               'sha1', digest, 'truncated', ARGV[i + 7])
    dead_lettered = dead_lettered + 1
  end
  i = i + 8
end
if dead_lettered + expired_removed > 0 then
  local trimmed = redis.call('XTRIM', dead, 'MAXLEN', '~', cap)
  if trimmed > 0 then redis.call('INCRBY', trimmed_counter, trimmed) end
end
for _ = 1, expired do
  local key = ARGV[i]
  i = i + 1
  -- Only while the record is still absent: a record stored again since then
  -- owns a queue entry of its own that must stay.
  if redis.call('EXISTS', key) == 0 then
    drop_entry(key)
    redis.call('XADD', dead, '*', 'reason_code', 'expired',
               'reason', 'the record expired (TTL) before any upload took it',
               'source_key', key, 'data', '', 'size', '0', 'sha1', '', 'truncated', '0')
    expired_removed = expired_removed + 1
  end
end
-- A second entry for a key of this batch: the key's own entry is settled
-- above (or kept for a newer version); this one goes.
for _ = 1, repeated do
  drop_entry(ARGV[i])
  i = i + 1
end

for first = 1, #release, 500 do
  redis.call('HDEL', claims, unpack(release, first, math.min(first + 499, #release)))
end
for first = 1, #delete, 500 do
  redis.call('DEL', unpack(delete, first, math.min(first + 499, #delete)))
end

-- Usually the batch is the head of the queue, in order: trim it off in one
-- step. Whatever is elsewhere (or was already gone) is removed one by one.
if queued and unqueue_total > 0 then
  local head = redis.call('LRANGE', queue, 0, unqueue_total - 1)
  local prefix = 0
  for _, key in ipairs(head) do
    local left = unqueue[key]
    if not left or left == 0 then break end
    unqueue[key] = left - 1
    prefix = prefix + 1
  end
  if prefix > 0 then redis.call('LTRIM', queue, prefix, -1) end
  for key, left in pairs(unqueue) do
    if left > 0 then redis.call('LREM', queue, left, key) end
  end
end
redis.call('DEL', KEYS[4])
if not queued then redis.call('HDEL', KEYS[5], ARGV[8]) end
return {settled, moved_on, dead_lettered, expired_removed}
