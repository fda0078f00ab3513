-- Sweeps one stretch of the uploaded index (keys.rs, `uploaded_index_key`):
-- fields whose deadline has passed go. The deadline is written with the
-- field (settle_slice.lua: the record's expiry, or a TTL from the upload if
-- later), and the take caps a record stored again after its upload at it
-- (take_page.lua), so no record outlives its field. Each upload sweeps about twice as many fields as it
-- recorded, resuming from the HSCAN cursor kept in KEYS[2], so the index
-- stays near a TTL's worth of uploads without any call visiting it whole.
-- Flags (allow-oom) and the lock check come from `fenced!` in scripts.rs.
--
-- KEYS: 1 the uploaded index, 2 the sweep's cursor, 3 the kind's upload lock
-- ARGV: 1 fields to visit (HSCAN's COUNT), 2 the run's lock token
-- Returns {fields visited, fields removed, 1 when the sweep came round to
-- the start (the index was visited whole), else 0}

local cursor = redis.call('GET', KEYS[2]) or '0'
local reply = redis.call('HSCAN', KEYS[1], cursor, 'COUNT', tonumber(ARGV[1]))
local fields = reply[2]
local now = tonumber(redis.call('TIME')[1])
local stale = {}
for at = 1, #fields, 2 do
  -- The value is the version's SHA-1 (40 hex digits), then the deadline.
  if (tonumber(fields[at + 1]:sub(41)) or 0) < now then stale[#stale + 1] = fields[at] end
end
if #stale > 0 then redis.call('HDEL', KEYS[1], unpack(stale)) end
redis.call('SET', KEYS[2], reply[1])
return {#fields / 2, #stale, reply[1] == '0' and 1 or 0}
