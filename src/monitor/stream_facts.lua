#!lua flags=no-writes
-- Facts about one kind's streams, computed where the data is, so that no
-- whole entry (up to an event's size) crosses the network for them:
-- the server's clock, the stream's last generated id (which a producer that
-- chose a future id pushes ahead of the clock for every later XADD *), how
-- many dead letters arrived within a window (counted up to a limit), and
-- how many the dead-letter cap has trimmed.
--
-- KEYS: 1 event stream, 2 dead-letter stream, 3 counter of trimmed dead letters
-- ARGV: 1 window in ms, 2 the most dead letters to count
-- Returns {server time ms, last generated id or '', dead letters within
--          the window (at most ARGV[2]), dead letters trimmed, bytes the
--          dead-letter stream takes (sampled)}
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local last = ''
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
  end
end
local since = string.format('%.0f', math.max(now_ms - tonumber(ARGV[1]), 0))
local recent = #redis.call('XRANGE', KEYS[2], since, '+', 'COUNT', tonumber(ARGV[2]))
local trimmed = tonumber(redis.call('GET', KEYS[3]) or '0')
local bytes = redis.call('MEMORY', 'USAGE', KEYS[2], 'SAMPLES', 5) or 0
return {now_ms, last, recent, trimmed, bytes}
