-- The last step of settling a batch: its manifest, settle cursor and
-- entries list go (UNLINK: a large list is freed off the main thread), and
-- a parked one leaves the parked index.
-- Flags (allow-oom) and the lock check come from `fenced!` in scripts.rs.
--
-- KEYS: 1 manifest, 2 settle cursor, 3 entries list, 4 parked index, 5 the
--       kind's upload lock
-- ARGV: 1 batch id, 2 'parked' or 'queued', 3 the run's lock token
-- Returns 1, or 0 (changing nothing) when the manifest is gone or names
-- another batch.

local prefix = '{"batch_id":"' .. ARGV[1] .. '"'
if redis.call('GETRANGE', KEYS[1], 0, #prefix - 1) ~= prefix then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('UNLINK', KEYS[3])
if ARGV[2] == 'parked' then redis.call('HDEL', KEYS[4], ARGV[1]) end
return 1
