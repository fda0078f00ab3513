-- Renews the lock's expiry only while this run's token holds it (at
-- maxmemory too: it adds no memory, and losing the lock stops the upload).
-- KEYS: 1 the lock; ARGV: 1 this run's token, 2 expiry in ms
-- Returns 1 when renewed, 0 when the lock is another's or gone.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
