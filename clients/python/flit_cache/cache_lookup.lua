-- Reads a record and counts the lookup, hit or miss, in the state
-- database: in the kind's totals since the counters began, and in the
-- current minute's slot of a 60-slot ring, so readers can sum the last hour
-- (cache_stats.lua). The minute comes from the Redis clock, one clock for
-- every process, whatever language looks up. Redis runs `SELECT` inside a
-- script for the script alone, so the caller's connection stays on the
-- records' database. allow-oom: a full Redis must still answer lookups; the
-- counters add no key once the hash exists, and at most 182 fields a kind.
--
-- KEYS: 1 the record key, 2 the stats hash (flit:cache:stats)
-- ARGV: 1 the state database, 2 the kind's name (field prefix)
-- Fields: <kind>:hits, <kind>:misses (totals); <kind>:<slot>:minute,
-- <kind>:<slot>:hits, <kind>:<slot>:misses with slot = minute % 60.
-- Returns the record, or nil.

local record = redis.call('GET', KEYS[1])
local result = record and 'hits' or 'misses'
local minute = math.floor(tonumber(redis.call('TIME')[1]) / 60)
local slot = ARGV[2] .. ':' .. (minute % 60)
redis.call('SELECT', ARGV[1])
redis.call('HINCRBY', KEYS[2], ARGV[2] .. ':' .. result, 1)
if tonumber(redis.call('HGET', KEYS[2], slot .. ':minute')) ~= minute then
  -- The slot last counted an hour or more ago: start it again.
  redis.call('HSET', KEYS[2], slot .. ':minute', minute, slot .. ':hits', 0, slot .. ':misses', 0)
end
redis.call('HINCRBY', KEYS[2], slot .. ':' .. result, 1)
return record
