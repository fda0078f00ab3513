-- Reads one kind's lookup counters: the totals since they began, and the
-- hits and misses of the last hour (the 60 one-minute slots of the ring
-- cache_lookup.lua keeps, the current minute included, judged by the Redis
-- clock). A slot last written more than an hour ago counts nothing. Runs
-- on the state database, read-only.
--
-- KEYS: 1 the stats hash (flit:cache:stats)
-- ARGV: 1 the kind's name (field prefix)
-- Returns {total hits, total misses, last hour's hits, last hour's misses}.

local now = math.floor(tonumber(redis.call('TIME')[1]) / 60)
local kind = ARGV[1]
local totals = redis.call('HMGET', KEYS[1], kind .. ':hits', kind .. ':misses')
local hits, misses = 0, 0
for slot = 0, 59 do
  local prefix = kind .. ':' .. slot
  local row = redis.call('HMGET', KEYS[1], prefix .. ':minute', prefix .. ':hits', prefix .. ':misses')
  local minute = tonumber(row[1])
  if minute and minute > now - 60 and minute <= now then
    hits = hits + (tonumber(row[2]) or 0)
    misses = misses + (tonumber(row[3]) or 0)
  end
end
return {tonumber(totals[1]) or 0, tonumber(totals[2]) or 0, hits, misses}
