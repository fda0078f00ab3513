-- Creates the consumer group, and the stream if there is none yet. Runs at
-- maxmemory too: the workers, which free memory, must be able to start.
-- KEYS: 1 the stream; ARGV: 1 the group
-- Fails with BUSYGROUP when the group exists (the caller takes that as done).
redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
