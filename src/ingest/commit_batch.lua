-- Commits one batch read from an event stream, atomically: stores every
-- accepted event as a record with its TTL and queues it for upload, writes
-- every rejected event to the dead-letter stream with its reason, and
-- acknowledges all of them. Either all of this happens or none of it.
-- (The `#!lua` line that makes Redis check memory before running it, with
-- or without allow-oom, is put in front by commit.rs.)
--
-- KEYS: 1 stream, 2 dead-letter stream, 3 upload queue, 4 counter of dead
--       letters the cap trimmed, 5 versions batches have claimed (a hash)
-- ARGV: 1 group, 2 ttl seconds, 3 record prefix, 4 superseded prefix,
--       5 dead-letter cap, 6 number of accepted events, 7 number of rejected,
--       8 the event time field,
--       then per accepted event: entry id, record id, payload, original,
--         stamp offset, stamp length (original is empty unless the
--         timestamp was stamped at arrival: the payload is then the original
--         with the bytes from the offset, of that length, replaced by a stamp)
--       then per rejected event: entry id, reason code, reason, data kept,
--         whole size, sha1 of the whole data, '1' when data is a prefix
-- Returns {stored, duplicates, superseded, dead_lettered, dead_letters_trimmed}
local stream, dead, queue, trimmed_counter, claims = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local group = ARGV[1]
local ttl = tonumber(ARGV[2])
local record_prefix, superseded_prefix = ARGV[3], ARGV[4]
local cap = tonumber(ARGV[5])
local accepted, rejected = tonumber(ARGV[6]), tonumber(ARGV[7])
local time_field = ARGV[8]

-- A copy of an event that carried no time of its own differs from the stored
-- record only in the arrival time stamped into it: compare around the stamp,
-- and check that what sits between is exactly a stamp as the door writes it
-- (in front: "<field>":"<time>", ; in place of a null: "<time>").
local stamp_pattern = '^"%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ"$'
local function is_stamp(text) return string.find(text, stamp_pattern) ~= nil end
local function same_apart_from_stamp(current, original, at, replaced)
  if original == '' then return false end
  local prefix = original:sub(1, at)
  local suffix = original:sub(at + replaced + 1)
  if #suffix == 0 or #current <= #prefix + #suffix then return false end
  if current:sub(1, #prefix) ~= prefix or current:sub(-#suffix) ~= suffix then return false end
  local middle = current:sub(#prefix + 1, #current - #suffix)
  if replaced > 0 then return is_stamp(middle) end
  local head = '"' .. time_field .. '":'
  return middle:sub(1, #head) == head and middle:sub(-1) == ','
    and is_stamp(middle:sub(#head + 1, -2))
end

-- Usually no upload is under way: then no lookup of claims at all.
local any_claims = redis.call('EXISTS', claims) == 1

local stored, duplicates, superseded, dead_lettered = 0, 0, 0, 0
local acks = {}
local i = 9

for _ = 1, accepted do
  local entry, id, payload, original = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local at, replaced = tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])
  i = i + 6
  local key = record_prefix .. id
  local current = redis.call('GET', key)
  if not current then
    redis.call('SET', key, payload, 'EX', ttl)
    redis.call('RPUSH', queue, key)
    stored = stored + 1
  elseif current == payload or same_apart_from_stamp(current, original, at, replaced) then
    -- The same event again (redelivery, producer retry): nothing new.
    duplicates = duplicates + 1
  else
    local this_version = superseded_prefix .. redis.sha1hex(payload) .. ':' .. id
    if redis.call('EXISTS', this_version) == 1 then
      -- An older version seen again while it still waits for upload.
      duplicates = duplicates + 1
    else
      -- The id was reused with another payload. The waiting version moves to
      -- a key of its own and keeps its expiry; the record key takes the
      -- newest payload, so lookups see it. Whoever owned the waiting version
      -- still owns it: a queue entry (then the record key's entry passes to
      -- the newest, and the moved version is queued), or a batch that claimed
      -- it (then the batch uploads it from its new key, and the newest gets a
      -- queue entry of its own).
      local digest = redis.sha1hex(current)
      local previous = superseded_prefix .. digest .. ':' .. id
      local left = redis.call('PTTL', key)
      if left <= 0 then left = ttl * 1000 end
      redis.call('SET', previous, current, 'PX', left)
      if any_claims and redis.call('HEXISTS', claims, digest .. ':' .. key) == 1 then
        redis.call('RPUSH', queue, key)
      else
        redis.call('RPUSH', queue, previous)
      end
      redis.call('SET', key, payload, 'EX', ttl)
      superseded = superseded + 1
    end
  end
  acks[#acks + 1] = entry
end

for _ = 1, rejected do
  local entry = ARGV[i]
  redis.call('XADD', dead, '*', 'reason_code', ARGV[i + 1], 'reason', ARGV[i + 2],
             'source_id', entry, 'data', ARGV[i + 3], 'size', ARGV[i + 4],
             'sha1', ARGV[i + 5], 'truncated', ARGV[i + 6])
  i = i + 7
  dead_lettered = dead_lettered + 1
  acks[#acks + 1] = entry
end

-- The dead-letter stream is capped; what the cap removes is counted.
local trimmed = 0
if dead_lettered > 0 then
  trimmed = redis.call('XTRIM', dead, 'MAXLEN', '~', cap)
  if trimmed > 0 then redis.call('INCRBY', trimmed_counter, trimmed) end
end

-- XACK in slices: Lua's unpack has a limit on the number of values.
for first = 1, #acks, 200 do
  redis.call('XACK', stream, group, unpack(acks, first, math.min(first + 199, #acks)))
end

return {stored, duplicates, superseded, dead_lettered, trimmed}
