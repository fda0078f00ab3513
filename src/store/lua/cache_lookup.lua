-- Reads a record and counts the lookup, hit or miss, in the state
-- database. Redis runs `SELECT` inside a script for the script alone, so
-- the caller's connection stays on the records' database. allow-oom: a
-- full Redis must still answer lookups; the counter adds no key once it
-- exists.
--
-- KEYS: 1 the record key, 2 the stats hash (flit:cache:stats)
-- ARGV: 1 the state database, 2 the kind's name (field prefix)
-- Returns the record, or nil.

local record = redis.call('GET', KEYS[1])
redis.call('SELECT', ARGV[1])
redis.call('HINCRBY', KEYS[2], ARGV[2] .. (record and ':hits' or ':misses'), 1)
return record
