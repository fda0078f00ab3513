-- Trims a stream up to the oldest entry some consumer group may still need:
-- for every group, its oldest pending entry, or its last delivered entry when
-- nothing is pending. Entries below that floor are acknowledged by all groups.
-- A stream without groups is left alone: nobody has read it yet.
--
-- It also removes consumers of our group that have nothing pending and have
-- been idle longer than ARGV[2] ms; checking and deleting in one script means
-- no entry can be handed to such a consumer in between and then lost.
--
-- KEYS: 1 stream
-- ARGV: 1 our group, 2 idle ms after which an empty consumer is removed
-- Returns the number of entries removed.
local stream = KEYS[1]
local our_group, stale_ms = ARGV[1], tonumber(ARGV[2])
if redis.call('EXISTS', stream) == 0 then return 0 end

for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', stream, our_group)) do
  local name, pending, idle
  for f = 1, #consumer, 2 do
    if consumer[f] == 'name' then name = consumer[f + 1] end
    if consumer[f] == 'pending' then pending = consumer[f + 1] end
    if consumer[f] == 'idle' then idle = consumer[f + 1] end
  end
  if pending == 0 and idle > stale_ms then
    redis.call('XGROUP', 'DELCONSUMER', stream, our_group, name)
  end
end

local function older(a, b)
  local a_ms, a_seq = string.match(a, '^(%d+)-(%d+)$')
  local b_ms, b_seq = string.match(b, '^(%d+)-(%d+)$')
  a_ms, b_ms = tonumber(a_ms), tonumber(b_ms)
  if a_ms ~= b_ms then return a_ms < b_ms end
  return tonumber(a_seq) < tonumber(b_seq)
end

local floor = nil
for _, group in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
  local name, last_delivered
  for f = 1, #group, 2 do
    if group[f] == 'name' then name = group[f + 1] end
    if group[f] == 'last-delivered-id' then last_delivered = group[f + 1] end
  end
  local candidate = last_delivered
  local summary = redis.call('XPENDING', stream, name)
  if summary[1] > 0 then candidate = summary[2] end
  if floor == nil or older(candidate, floor) then floor = candidate end
end

if floor == nil or floor == '0-0' then return 0 end
return redis.call('XTRIM', stream, 'MINID', '~', floor)
