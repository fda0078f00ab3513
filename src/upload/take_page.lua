-- Reads one page of the upload queue for a batch and claims, in the same
-- step, each version it reads: field `<sha1 of the value>:<key>` in the
-- claims hash. A claimed version belongs to its batch until the batch is
-- settled: when a newer version of the key arrives meanwhile, ingest moves
-- the claimed one aside without queueing it again (the batch uploads it)
-- and gives the newer one a queue entry of its own. Reading and claiming
-- at once leaves no moment in which a version is read but not yet claimed.
-- Flags (allow-oom) and the lock check come from `fenced!` in queue.rs.
-- allow-oom: the uploader must work when Redis is full.
--
-- A version already marked uploaded (mark_uploaded.lua), or claimed by
-- another batch, is answered as such and not claimed: its entry is a stale
-- one, and the version is never uploaded twice.
--
-- KEYS: 1 upload queue, 2 claims hash, 3 the kind's upload lock
-- ARGV: 1 first index, 2 most entries, 3 most payload bytes, 4 record
--       prefix, 5 superseded prefix, 6 uploaded-mark prefix, 7 the run's
--       lock token
-- Returns key, value (false when the record is gone), uploaded (1 or 0),
-- ... for the entries taken: it stops after the entry whose value reaches
-- the byte budget.

local keys = redis.call('LRANGE', KEYS[1], ARGV[1], tonumber(ARGV[1]) + tonumber(ARGV[2]) - 1)
local budget = tonumber(ARGV[3])
local record_prefix, superseded_prefix, mark_prefix = ARGV[4], ARGV[5], ARGV[6]
-- The record id a queue key names: `<record prefix><id>` or
-- `<superseded prefix><40 hex digits>:<id>`.
local function id_of(key)
  if key:sub(1, #record_prefix) == record_prefix then return key:sub(#record_prefix + 1) end
  return key:sub(#superseded_prefix + 42)
end
-- Whether this version is uploaded already (marked beside the record), or
-- belongs to another batch (claimed; a parked one): either way this entry
-- is a stale one, and the version is not this batch's to upload.
local function taken(key, digest)
  return redis.call('HEXISTS', mark_prefix .. id_of(key), digest) == 1
    or redis.call('HEXISTS', KEYS[2], digest .. ':' .. key) == 1
end
local out, bytes, claims = {}, 0, {}
for _, key in ipairs(keys) do
  local value = redis.call('GET', key)
  local uploaded = 0
  if value then
    local digest = redis.sha1hex(value)
    if taken(key, digest) then
      uploaded = 1
    else
      claims[#claims + 1] = digest .. ':' .. key
      claims[#claims + 1] = 1
    end
  end
  out[#out + 1] = key
  out[#out + 1] = value
  out[#out + 1] = uploaded
  if value and uploaded == 0 then
    bytes = bytes + #value
    if bytes >= budget then break end
  end
end
-- One HSET per 500 claims, not one per record: a command run from a script
-- costs as much as the rest of a record's work (and one AOF entry each).
for first = 1, #claims, 1000 do
  redis.call('HSET', KEYS[2], unpack(claims, first, math.min(first + 999, #claims)))
end
return out
