-- Reads a record and counts the lookup, hit or miss, in the state
-- database: in the kind's totals since the counters began, and in the
-- current minute's slot of a 60-slot ring, so readers can sum the last hour
-- (cache_stats.lua). The minute comes from the Redis clock, one clock for
-- every process, whatever language looks up. Redis runs `SELECT` inside a
-- script for the script alone, so the caller's connection stays on the
-- records' database. allow-oom: a full Redis must still answer lookups; the
-- counters add no key once the hash exists, and at most 182 fields a kind.
--
-- KEYS: 1 the stats hash (flit:cache:stats)
-- ARGV: 1 the state database, 2 the kind's name (field prefix), 3 the
--       record key. The record key is an argument, not a key: Redis's ACL
--       gives a script's declared keys read and write checks, and the
--       lookup user (flit-reader) may only read records; the GET below is
--       still checked against its read-only record keys. flit-cache runs on
--       one standalone Redis (its kinds live in separate databases), where
--       a script may read a key it did not declare.
-- Fields: <kind>:hits, <kind>:misses (totals); <kind>:<slot>:minute,
-- <kind>:<slot>:hits, <kind>:<slot>:misses with slot = minute % 60.
-- Returns the record, or nil.

local record = redis.call('GET', ARGV[3])
local result = record and 'hits' or 'misses'
local minute = math.floor(tonumber(redis.call('TIME')[1]) / 60)
local slot = ARGV[2] .. ':' .. (minute % 60)
redis.call('SELECT', ARGV[1])
redis.call('HINCRBY', KEYS[1], ARGV[2] .. ':' .. result, 1)
if tonumber(redis.call('HGET', KEYS[1], slot .. ':minute')) ~= minute then
  -- The slot last counted an hour or more ago: start it again.
  redis.call('HSET', KEYS[1], slot .. ':minute', minute, slot .. ':hits', 0, slot .. ':misses', 0)
end
redis.call('HINCRBY', KEYS[1], slot .. ':' .. result, 1)
return record
