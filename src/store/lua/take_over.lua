-- Copies an in-flight manifest an earlier version left in database 0 beside
-- the kind's keys, where none is.
-- Flags (allow-oom) and the lock check come from `fenced!` in scripts.rs.
--
-- KEYS: 1 in-flight manifest, 2 the kind's upload lock
-- ARGV: 1 manifest, 2 the run's lock token

redis.call('SET', KEYS[1], ARGV[1], 'NX')
