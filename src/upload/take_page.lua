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
-- KEYS: 1 upload queue, 2 claims hash, 3 the kind's upload lock
-- ARGV: 1 first index, 2 most entries, 3 most payload bytes, 4 the run's
--       lock token
-- Returns key, value (false when the record is gone), ... for the entries
-- taken: it stops after the entry whose value reaches the byte budget.

local keys = redis.call('LRANGE', KEYS[1], ARGV[1], tonumber(ARGV[1]) + tonumber(ARGV[2]) - 1)
local budget = tonumber(ARGV[3])
local out, bytes, claims = {}, 0, {}
for _, key in ipairs(keys) do
  local value = redis.call('GET', key)
  out[#out + 1] = key
  out[#out + 1] = value
  if value then
    claims[#claims + 1] = redis.sha1hex(value) .. ':' .. key
    claims[#claims + 1] = 1
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
