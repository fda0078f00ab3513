-- Facts about one kind's streams, computed where the data is, so that no
-- whole entry (up to an event's size) crosses the network for them:
-- the server's clock, the stream's last generated id (which a producer that
-- chose a future id pushes ahead of the clock for every later XADD *), how
-- many dead letters arrived within a window (counted up to a limit), and
-- how many the dead-letter cap has trimmed, and whether the group has
-- entries left to read. Redis's own `lag` counter cannot say the last: after
-- a restart from the AOF it can report thousands of entries the group has in
-- fact read.
--
-- KEYS: 1 event stream, 2 dead-letter stream, 3 counter of trimmed dead letters
-- ARGV: 1 window in ms, 2 the most dead letters to count, 3 consumer group
-- Returns {server time ms, last generated id or '', dead letters within
--          the window (at most ARGV[2]), dead letters trimmed, bytes the
--          dead-letter stream takes (sampled), 1 when an entry after the
--          group's last delivered one exists (or there is no group), else 0}
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
-- Whether stream id a comes after b. Ids are two 64-bit decimals, past
-- what a Lua number holds exactly: compared as digit strings.
local function after(a, b)
  local function parts(id)
    local ms, seq = string.match(id, '^(%d+)-(%d+)$')
    return ms or '0', seq or '0'
  end
  local function greater(x, y)
    if #x ~= #y then return #x > #y end
    return x > y
  end
  local am, as = parts(a)
  local bm, bs = parts(b)
  if am ~= bm then return greater(am, bm) end
  return greater(as, bs)
end
local last, unread, deleted = '', 0, ''
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  local max_deleted = '0-0'
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
    if info[i] == 'max-deleted-entry-id' then max_deleted = info[i + 1] end
  end
  local delivered = nil
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local name, id = nil, nil
    for i = 1, #group, 2 do
      if group[i] == 'name' then name = group[i + 1] end
      if group[i] == 'last-delivered-id' then id = group[i + 1] end
    end
    if name == ARGV[3] then delivered = id end
  end
  -- Nothing comes after the last generated id; asking would also fail when
  -- that id is the largest possible one ('(' before it is an error).
  if delivered == nil then
    unread = redis.call('XLEN', KEYS[1]) > 0 and 1 or 0
  elseif delivered ~= last
      and #redis.call('XRANGE', KEYS[1], '(' .. delivered, '+', 'COUNT', 1) > 0 then
    unread = 1
  end
  -- A max-deleted id past the last generated one is what an id reset
  -- leaves behind (XSETID lowers the last id), not a deletion.
  if after(max_deleted, delivered or '0-0') and not after(max_deleted, last) then
    deleted = max_deleted
  end
end
local since = string.format('%.0f', math.max(now_ms - tonumber(ARGV[1]), 0))
local recent = #redis.call('XRANGE', KEYS[2], since, '+', 'COUNT', tonumber(ARGV[2]))
local trimmed = tonumber(redis.call('GET', KEYS[3]) or '0')
local bytes = redis.call('MEMORY', 'USAGE', KEYS[2], 'SAMPLES', 5) or 0
return {now_ms, last, recent, trimmed, bytes, unread, deleted}
