-- Keeps a parked batch's manifest and summary up to date, even when Redis
-- is full, while it is still parked.
-- Flags (allow-oom) and the lock check come from `fenced!` in scripts.rs.
--
-- KEYS: 1 parked manifest, 2 parked index, 3 the kind's upload lock
-- ARGV: 1 batch id, 2 manifest, 3 summary, 4 the run's lock token
-- Returns 1, or 0 (changing nothing) when the batch is parked no more.

if redis.call('SET', KEYS[1], ARGV[2], 'XX') == false then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
