-- Settles one slice of a batch the warehouse has confirmed, in the
-- records' database. The batch's entries left the queue when it was taken
-- (take_page.lua), so settling never reads or changes the queue: each slice
-- costs what its records cost, and a batch costs O(batch) however long the
-- queue behind it.
-- Flags (allow-oom) and the lock check come from `fenced!` in scripts.rs.
-- allow-oom: settling is what frees memory when Redis is full.
--
-- Per item, in the order upload_queue.rs gives them (expired, uploaded, dead):
-- - uploaded: the version's claim is released, and what becomes of it
--   follows ARGV[3]:
--   'keep': the record stays at its key, and the uploaded index (KEYS[7],
--     one HSET for the slice) records its version: no key of its own;
--   'remove-marked' (Redis near maxmemory): the record leaves Redis and the
--     index still records its version, so a late copy is recognised;
--   'remove' (FLIT_KEEP_UPLOADED=false): the record leaves, nothing is
--     recorded.
--   A version the index cannot hold (moved aside by ingest when a newer
--   one came, or gone from Redis meanwhile) is marked in the record's
--   own mark hash (`tx!{id}`, rare); a copy moved aside goes. When the
--   index held an older uploaded version of the id, that one moves to the
--   mark hash first, so every version uploaded stays recognised.
-- - dead: the claim is released, the record removed, and a dead letter
--   written with its reason, from the manifest's copy.
-- - expired: its queue entry named a record already gone: a dead letter
--   (reason `expired`, no data), so each one is accounted for by key.
-- A record is touched only while it holds the exact settled content.
--
-- A slice run again (a crash, a lost reply, a recovered batch settled
-- again) changes nothing twice. An uploaded or dead item is acted on only
-- while the batch still claims its version (the claim's value is the
-- batch's id, take_page.lua): the first pass releases the claim, so a
-- second finds none and leaves the key alone, even when the same event was
-- sent again meanwhile and stored anew (it is a record of its own, queued
-- on its own). Expired items come first in every batch's list, and that
-- prefix is fixed when the batch is taken, so the cursor (KEYS[2]), which
-- counts the items done, skips the expired items done before however the
-- rest of the list was rebuilt. The batch's manifest, cursor and entries
-- list go in a last step (SETTLE_DONE in upload_queue.rs).
--
-- A manifest of format 1 may come from a binary that claimed nothing
-- ('unclaimed'): a version without a claim is then settled by its content,
-- as that binary did.
--
-- Every read comes first and every write after, so an error (a key of
-- another type set by hand) stops the slice before it changed anything;
-- reads of record keys are under pcall, and such a key counts as absent.
--
-- An index field holds the version's SHA-1 and a deadline (Unix seconds):
-- the record's expiry or a TTL from the upload, whichever is later; the
-- sweep (sweep_uploaded.lua) removes it after that.
--
-- KEYS: 1 the batch's manifest, 2 its settle cursor, 3 dead-letter stream,
--       4 counter of dead letters the cap trimmed, 5 versions batches have
--       claimed (a hash, see take_page.lua), 6 upload queue (only for a
--       batch cut without claims by layout 1), 7 the uploaded index, 8 the
--       kind's upload lock
-- ARGV: 1 batch id, 2 superseded prefix, 3 'keep', 'remove-marked' or
--       'remove' (see above), 4 dead-letter cap, 5 index of this slice's
--       first item, 6 'claimed' or 'unclaimed' (see above), 7 uploaded-mark
--       prefix, 8 record TTL seconds (how long a mark matters), then items:
--       'u', queue key, id, sha1 of payload
--       'd', queue key, id, sha1, reason code, reason, payload kept (a
--            prefix when long), whole size, '1' when the kept payload is a
--            prefix
--       'e', queue key
--       then the run's lock token
-- Returns {settled, moved_on, dead_lettered, expired_dead_lettered}, or
-- {-1} when the manifest is gone or names another batch: the batch was
-- settled already (or another run holds the kind), and nothing is touched.

local prefix_of_manifest = '{"batch_id":"' .. ARGV[1] .. '"'
if redis.call('GETRANGE', KEYS[1], 0, #prefix_of_manifest - 1) ~= prefix_of_manifest then
  return {-1}
end
local cursor, dead, trimmed_counter, claims, queue = KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local uploaded_index = KEYS[7]
local superseded = ARGV[2]
local keep = ARGV[3] == 'keep'
local record_uploads = ARGV[3] ~= 'remove'
local mark_prefix, ttl = ARGV[7], tonumber(ARGV[8])
local first_item = 9
local cap = tonumber(ARGV[4])
local done = tonumber(redis.call('GET', cursor) or '0') or 0
local index = tonumber(ARGV[5])
local batch_id, unclaimed = ARGV[1], ARGV[6] == 'unclaimed'

-- The items, checked whole before anything is read or written.
local width = {u = 4, d = 9, e = 2}
local i = first_item
while i < #ARGV do
  local w = width[ARGV[i]]
  if not w or i + w - 1 > #ARGV - 1 then
    return redis.error_reply('ERR settle_slice: malformed item at argument ' .. i .. '; nothing was changed')
  end
  i = i + w
end

local settled, moved_on, dead_lettered, expired = 0, 0, 0, 0
local release, delete, letters, unqueue = {}, {}, {}, {}
-- Uploaded versions to record: id -> digest, in the index or in the
-- record's own mark hash (rare).
local indexed, marked, slot = {}, {}, {}
-- The index holds one version per id: when a slice settles two versions
-- at the same record key (a newer one took it between two take pages),
-- the earlier goes to the mark hash.
local function record_in_index(id, digest, key)
  local at = slot[id]
  if at then
    marked[#marked + 1] = {id, indexed[at][2]}
    indexed[at][2] = digest
  else
    indexed[#indexed + 1] = {id, digest, key}
    slot[id] = #indexed
  end
end

local function get(key)
  local ok, value = pcall(redis.call, 'GET', key)
  if ok then return value end
  return false
end

-- Settles the version of record `id` whose content hashes to `digest`,
-- if this batch still claims it. Returns whether it was still there, and
-- whether the batch claimed it.
local function settle(key, id, digest, uploaded)
  local field = digest .. ':' .. key
  local owner = redis.call('HGET', claims, field)
  -- Layout 2 claimed with '1'; from layout 3 the value is the batch's id.
  local claimed = owner == batch_id or owner == '1'
  if not claimed and not (unclaimed and not owner) then
    -- Settled by an earlier pass (or claimed by another batch since):
    -- whatever the key holds now is not this batch's to touch.
    return false, false
  end
  if claimed then release[#release + 1] = field end
  local current = get(key)
  local at_superseded = key:sub(1, #superseded) == superseded
  if current and redis.sha1hex(current) == digest then
    -- Kept only at the record key: an older version's own key goes, as
    -- lookups read the newest and the mark recognises a late copy.
    if not (uploaded and keep) or at_superseded then
      delete[#delete + 1] = key
    end
    if uploaded and record_uploads then
      if at_superseded then marked[#marked + 1] = {id, digest}
      else record_in_index(id, digest, key) end
    end
    return true, claimed
  end
  -- Not at its key any more: the index holds the version at the record
  -- key, so this one, if uploaded, is marked beside the record.
  if uploaded and record_uploads then marked[#marked + 1] = {id, digest} end
  -- Gone (expired), or a newer version took the key while this one was
  -- uploading: then ingest moved this one to a key of its own. It goes
  -- (lookups read the newest; the mark recognises a late copy).
  local moved = superseded .. digest .. ':' .. id
  local copy = get(moved)
  local found = copy and redis.sha1hex(copy) == digest
  if found then
    delete[#delete + 1] = moved
    moved_on = moved_on + 1
    -- A batch cut by a binary without claims: the moved copy was queued
    -- as well; its entry goes, or the version would be taken again.
    if not claimed then unqueue[#unqueue + 1] = moved end
  end
  return found, claimed
end

i = first_item
while i < #ARGV do
  local tag = ARGV[i]
  if tag == 'u' then
    if settle(ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], true) then settled = settled + 1 end
  elseif tag == 'd' then
    local key, id, digest = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    local found, claimed = settle(key, id, digest, false)
    -- Written from the manifest's copy while the batch still claims the
    -- version, whether or not the record is still in Redis: one that
    -- expired while its batch was parked is still accounted for. A
    -- manifest without claims (layout 1) writes it only while the record
    -- is there, as that layout did.
    if found or claimed then
      letters[#letters + 1] = {'reason_code', ARGV[i + 4], 'reason', ARGV[i + 5],
        'source_key', key, 'data', ARGV[i + 6], 'size', ARGV[i + 7],
        'sha1', digest, 'truncated', ARGV[i + 8]}
      dead_lettered = dead_lettered + 1
    end
  elseif index >= done then
    -- Expired: only while the record is still absent; one stored again
    -- since is a record of its own, with a queue entry of its own.
    local ok, exists = pcall(redis.call, 'EXISTS', ARGV[i + 1])
    if ok and exists == 0 then
      letters[#letters + 1] = {'reason_code', 'expired',
        'reason', 'the record expired (TTL) before any upload took it',
        'source_key', ARGV[i + 1], 'data', '', 'size', '0', 'sha1', '', 'truncated', '0'}
      expired = expired + 1
    end
  end
  i = i + width[tag]
  index = index + 1
end

-- The index's current holders, read before any write: an older uploaded
-- version of an id whose newer one is recorded now moves to the mark hash.
local held = {}
if #indexed > 0 then
  local ids = {}
  for n, item in ipairs(indexed) do ids[n] = item[1] end
  held = redis.call('HMGET', uploaded_index, unpack(ids))
end
local now = tonumber(redis.call('TIME')[1])
-- A field's deadline: a TTL from now, or the record's own expiry when that
-- is later (a record stored with a longer TTL than this uploader's), so a
-- kept record never outlives its field, whatever the TTL setting becomes.
local index_fields = {}
for n, item in ipairs(indexed) do
  local id, digest = item[1], item[2]
  local before = held[n]
  if before and before:sub(1, 40) ~= digest then
    -- A mark's value is an upload time; the field held a deadline.
    local deadline = tonumber(before:sub(41))
    marked[#marked + 1] = {id, before:sub(1, 40), deadline and deadline - ttl}
  end
  local left = 0
  if keep then
    local ok, pttl = pcall(redis.call, 'PTTL', item[3])
    if ok and pttl > 0 then left = math.ceil(pttl / 1000) end
  end
  index_fields[#index_fields + 1] = id
  index_fields[#index_fields + 1] = digest .. (now + math.max(ttl, left))
end

for _, fields in ipairs(letters) do
  redis.call('XADD', dead, '*', unpack(fields))
end
if #letters > 0 then
  -- Under pcall: a counter set by hand to something else must not stop
  -- the slice after its letters were written.
  local ok, trimmed = pcall(redis.call, 'XTRIM', dead, 'MAXLEN', '~', cap)
  if ok and trimmed > 0 then pcall(redis.call, 'INCRBY', trimmed_counter, trimmed) end
end
for _, key in ipairs(unqueue) do redis.call('LREM', queue, 1, key) end
if #release > 0 then redis.call('HDEL', claims, unpack(release)) end
if #delete > 0 then redis.call('DEL', unpack(delete)) end
if #index_fields > 0 then redis.call('HSET', uploaded_index, unpack(index_fields)) end
-- A mark hash expires a TTL after its last upload, so never before its
-- record. An id reused on every event would make it grow: every 64th
-- version added, versions uploaded more than a TTL ago (their records are
-- gone) go.
for _, item in ipairs(marked) do
  local mark = mark_prefix .. item[1]
  -- pcall: a key of another type set by hand loses its mark, not the
  -- slice's other writes.
  local added = redis.pcall('HSET', mark, item[2], item[3] or now)
  if added == 1 and redis.call('HLEN', mark) % 64 == 0 then
    local fields = redis.call('HGETALL', mark)
    local stale = {}
    for at = 1, #fields, 2 do
      if (tonumber(fields[at + 1]) or 0) < now - ttl then stale[#stale + 1] = fields[at] end
    end
    for first = 1, #stale, 500 do
      redis.call('HDEL', mark, unpack(stale, first, math.min(first + 499, #stale)))
    end
  end
  if type(added) == 'number' then redis.call('EXPIRE', mark, ttl) end
end
if index > done then redis.call('SET', cursor, index) end
return {settled, moved_on, dead_lettered, expired}
