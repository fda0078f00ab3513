-- Marks versions the warehouse has confirmed as uploaded, beside their
-- records: `tx!{id}` is a hash of SHA-1 -> upload time (s), checked with
-- HEXISTS by ingest (a late copy is a duplicate) and by the take (no queue
-- entry uploads a marked version again). Run in slices of a few hundred
-- records before the batch is settled, so no call blocks Redis long. A
-- mark written early is true already (the rows are in the warehouse), and
-- writing it again is harmless, so a crash between slices costs nothing.
-- Flags (allow-oom) and the lock check come from `fenced!` in scripts.rs.
--
-- The mark expires a TTL after the upload, so never before the record. An
-- id reused on every event would make it grow: every 64th version added,
-- versions uploaded more than a TTL ago (their records are gone) go.
--
-- KEYS: 1 the kind's upload lock
-- ARGV: 1 uploaded-mark prefix, 2 record TTL seconds, then per record: id,
--       sha1 of the version; then the run's lock token
-- Returns the number of versions newly marked.

local prefix, ttl = ARGV[1], tonumber(ARGV[2])
local now = tonumber(redis.call('TIME')[1])
local added = 0
for i = 3, #ARGV - 1, 2 do
  local mark = prefix .. ARGV[i]
  if redis.call('HSET', mark, ARGV[i + 1], now) == 1 then
    added = added + 1
    if redis.call('HLEN', mark) % 64 == 0 then
      local fields = redis.call('HGETALL', mark)
      local stale = {}
      for at = 1, #fields, 2 do
        if tonumber(fields[at + 1]) < now - ttl then stale[#stale + 1] = fields[at] end
      end
      for first = 1, #stale, 500 do
        redis.call('HDEL', mark, unpack(stale, first, math.min(first + 499, #stale)))
      end
    end
  end
  redis.call('EXPIRE', mark, ttl)
end
return added
