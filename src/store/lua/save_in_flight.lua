-- Saves progress only into the same batch's manifest (its text begins with
-- its `batch_id`, which the script checks without reading on): a run cannot
-- bring back a batch another run settled, nor overwrite another batch's
-- manifest.
-- Flags (allow-oom) and the lock check come from `fenced!` in scripts.rs.
--
-- KEYS: 1 in-flight manifest, 2 the kind's upload lock
-- ARGV: 1 batch id, 2 manifest, 3 the run's lock token
-- Returns 1, or 0 (changing nothing) when the manifest names another batch.

local prefix = '{"batch_id":"' .. ARGV[1] .. '"'
if redis.call('GETRANGE', KEYS[1], 0, #prefix - 1) ~= prefix then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
