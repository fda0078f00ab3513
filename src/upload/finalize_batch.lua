#!lua
-- Settles a batch the warehouse has confirmed, in the records' database:
-- uploaded and dead-lettered records leave Redis (key and queue entry),
-- queue entries whose record was gone are dropped. Safe to run twice for the
-- same batch (a crash between this script and the manifest's removal): a
-- record is removed only while it still holds the exact uploaded content.
--
-- KEYS: 1 upload queue, 2 dead-letter stream
-- ARGV: 1 superseded prefix, 2 uploaded count, 3 dead count, 4 gone count,
--       per uploaded: queue key, id, sha1 of payload
--       per dead:     queue key, id, sha1 of payload, reason, payload
--       per gone:     queue key
-- Returns {settled, moved_on, dead_lettered, gone_removed}
local queue, dead = KEYS[1], KEYS[2]
local superseded = ARGV[1]
local uploaded, dead_count, gone = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local settled, moved_on, dead_lettered, gone_removed = 0, 0, 0, 0

-- Removes the version of record `id` whose content hashes to `digest`;
-- returns true if it was still there.
local function settle(key, id, digest)
  local current = redis.call('GET', key)
  if current and redis.sha1hex(current) == digest then
    redis.call('DEL', key)
    redis.call('LREM', queue, 1, key)
    return true
  end
  if not current then
    -- Already settled, or expired: drop a dangling queue entry, if any.
    redis.call('LREM', queue, 1, key)
    return false
  end
  -- A newer version arrived while this one was uploading: ingest moved the
  -- uploaded content to its own key and queued it. Remove that copy; the
  -- record key keeps its queue entry for the newer content.
  local moved = superseded .. digest .. ':' .. id
  local copy = redis.call('GET', moved)
  if copy and redis.sha1hex(copy) == digest then
    redis.call('DEL', moved)
    redis.call('LREM', queue, 1, moved)
    moved_on = moved_on + 1
    return true
  end
  return false
end

local i = 5
for _ = 1, uploaded do
  if settle(ARGV[i], ARGV[i + 1], ARGV[i + 2]) then settled = settled + 1 end
  i = i + 3
end
for _ = 1, dead_count do
  local key, id, digest, reason, payload = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  i = i + 5
  if settle(key, id, digest) then
    redis.call('XADD', dead, '*', 'reason_code', 'schema_mismatch', 'reason', reason,
               'source_key', key, 'data', payload)
    dead_lettered = dead_lettered + 1
  end
end
for _ = 1, gone do
  local key = ARGV[i]
  i = i + 1
  -- Only while the record is still absent: a record stored again since then
  -- owns a queue entry of its own that must stay.
  if redis.call('EXISTS', key) == 0 then
    gone_removed = gone_removed + redis.call('LREM', queue, 1, key)
  end
end
return {settled, moved_on, dead_lettered, gone_removed}
