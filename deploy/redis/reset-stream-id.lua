-- Brings a stream's ids back to the Redis clock after a producer chose an id
-- in the future (every later XADD * gets an id after it) or the last
-- possible id, 18446744073709551615-18446744073709551615 (every later
-- XADD * fails). Run it once `flit-cache monitor` shows the stream's lag and
-- pending at 0 (README, "A stream id in the future"):
--
--   REDISCLI_AUTH="$REDIS_ADMIN_PASSWORD" redis-cli --user flit-admin -n 1 \
--     --eval deploy/redis/reset-stream-id.lua stream:predictions
--
-- It refuses, changing nothing, while any group still has entries to read or
-- to acknowledge. Otherwise, in one step: it removes the read entries, sets
-- the stream's last id to the clock, and moves every group there, so the
-- next XADD * is read by the group as usual. Returns the new last id.
local stream = KEYS[1]
if redis.call('EXISTS', stream) == 0 then
  return redis.error_reply('no stream ' .. stream)
end
local info = redis.call('XINFO', 'STREAM', stream)
local last
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then last = info[i + 1] end
end
local groups = redis.call('XINFO', 'GROUPS', stream)
for _, group in ipairs(groups) do
  local name, pending, delivered
  for f = 1, #group, 2 do
    if group[f] == 'name' then name = group[f + 1]
    elseif group[f] == 'pending' then pending = group[f + 1]
    elseif group[f] == 'last-delivered-id' then delivered = group[f + 1] end
  end
  if pending ~= 0 or delivered ~= last then
    return redis.error_reply('group ' .. name .. ' of ' .. stream ..
      ' has not read and acknowledged every entry yet; wait until flit-cache monitor shows lag 0 and pending 0')
  end
end
local time = redis.call('TIME')
local id = time[1] .. string.format('%03d', math.floor(tonumber(time[2]) / 1000)) .. '-0'
redis.call('XTRIM', stream, 'MAXLEN', 0)
-- MAXDELETEDID 0-1 (Redis 7.0 ignores 0-0): every entry was read and acknowledged (checked above),
-- so none was deleted unread; a max-deleted id left in the future would
-- read as entries deleted before the group read them (monitor's
-- stream_deleted_before_read) until the clock got there.
redis.call('XSETID', stream, id, 'MAXDELETEDID', '0-1')
for _, group in ipairs(groups) do
  for f = 1, #group, 2 do
    if group[f] == 'name' then redis.call('XGROUP', 'SETID', stream, group[f + 1], id) end
  end
end
return id
