-- Takes the upload lock where nobody holds it: SET NX PX, which Redis runs
-- even at maxmemory (an upload is what frees memory).
-- KEYS: 1 the lock; ARGV: 1 this run's token, 2 expiry in ms
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
