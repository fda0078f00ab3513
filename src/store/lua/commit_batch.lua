-- Commits one batch read from an event stream, atomically: stores every
-- accepted event as a record with its TTL and queues it for upload, writes
-- every rejected event to the dead-letter stream with its reason, and
-- acknowledges all of them. Either all of this happens or none of it.
-- (The `#!lua` line that makes Redis check memory before running it, with
-- or without allow-oom, is put in front by scripts.rs.)
--
-- The common path costs one command per event: `SET key payload NX GET EX
-- ttl` stores a new record, or answers the record already there without
-- touching it (a duplicate, uploaded or not, is then recognised by its
-- bytes). The call ends with one RPUSH of every key queued and one XACK.
-- Only an id reused with another payload (rare) reads more: the claims,
-- the uploaded index and the uploaded marks (see docs/architecture.md,
-- "Storage layout"); ingest never writes either of the last two.
--
-- KEYS: 1 stream, 2 dead-letter stream, 3 upload queue, 4 counter of dead
--       letters the cap trimmed, 5 versions batches have claimed (a hash),
--       6 the uploaded index (a hash: id -> sha1 and deadline), 7 the
--       layout version (flit:layout)
-- ARGV: 1 group, 2 ttl seconds, 3 record prefix, 4 superseded prefix,
--       5 dead-letter cap, 6 number of accepted events, 7 number of rejected,
--       8 the event time field, 9 the uploaded-mark prefix, 10 the prefix
--       of the per-hour counter of records stored, 11 dead-letter bytes kept,
--       12 this binary's layout version,
--       then per accepted event: entry id, record id, payload, original,
--         stamp offset, stamp length (original is empty unless the
--         timestamp was stamped at arrival: the payload is then the original
--         with the bytes from the offset, of that length, replaced by a stamp)
--       then per rejected event: entry id, reason code, reason, data kept,
--         whole size, sha1 of the whole data, '1' when data is a prefix
-- Returns {stored, duplicates, superseded, dead_lettered, dead_letters_trimmed}
local stream, dead, queue, trimmed_counter, claims = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local uploaded_index = KEYS[6]
local group = ARGV[1]
local ttl = tonumber(ARGV[2])
local record_prefix, superseded_prefix = ARGV[3], ARGV[4]
local cap = tonumber(ARGV[5])
local accepted, rejected = tonumber(ARGV[6]), tonumber(ARGV[7])
local time_field = ARGV[8]
local mark_prefix = ARGV[9]
local stored_counter_prefix = ARGV[10]
local keep_bytes = tonumber(ARGV[11])

-- Checked on every call, not only when the worker connects: a worker that
-- went on running while a newer binary raised the layout stops here,
-- changing nothing, instead of writing what the newer layout would misread
-- (the worker reconnects, its layout claim is refused, and it waits).
local layout = tonumber(redis.call('GET', KEYS[7]) or '1') or 0
if layout > tonumber(ARGV[12]) then
  return redis.error_reply('NEWER_LAYOUT Redis holds layout ' .. layout .. ' in ' .. KEYS[7] ..
    ', this flit-cache knows layouts up to ' .. ARGV[12] .. '; nothing was committed')
end

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

-- Looked up only on the rare path, and then once: usually no upload is
-- under way and the hash does not exist.
local any_claims = nil
local function claimed(field)
  if any_claims == nil then any_claims = redis.call('EXISTS', claims) == 1 end
  return any_claims and redis.call('HEXISTS', claims, field) == 1
end
-- Whether the version of record `id` hashing to `digest` was uploaded
-- already: settling records the version at the record key in the
-- uploaded index, and older ones in the mark beside the record, a hash
-- (see settle_slice.lua; layouts 2 and 3 marked every version there).
local function uploaded(id, digest)
  local held = redis.call('HGET', uploaded_index, id)
  if held and held:sub(1, 40) == digest then return true end
  return redis.call('HEXISTS', mark_prefix .. id, digest) == 1
end

local stored, duplicates, superseded, dead_lettered = 0, 0, 0, 0
local acks, queued = {}, {}
local i = 13

for _ = 1, accepted do
  local entry, id, payload, original = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local at, replaced = tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])
  i = i + 6
  local key = record_prefix .. id
  -- pcall: a key of another type (set by hand) must not abort the call
  -- half way, leaving earlier events stored but neither queued nor acked.
  local current = redis.pcall('SET', key, payload, 'NX', 'GET', 'EX', ttl)
  if type(current) == 'table' and current.err then
    redis.call('XADD', dead, '*', 'reason_code', 'record_key_unusable',
               'reason', 'Redis refused to store the record at ' .. key .. ': ' .. current.err,
               'source_id', entry, 'data', payload:sub(1, keep_bytes), 'size', #payload,
               'sha1', redis.sha1hex(payload), 'truncated', #payload > keep_bytes and '1' or '0')
    dead_lettered = dead_lettered + 1
  elseif not current then
    queued[#queued + 1] = key
    stored = stored + 1
  elseif current == payload or same_apart_from_stamp(current, original, at, replaced) then
    -- The same event again (redelivery, producer retry, a late copy of an
    -- uploaded record): nothing new.
    duplicates = duplicates + 1
  else
    local version = redis.sha1hex(payload)
    if redis.call('EXISTS', superseded_prefix .. version .. ':' .. id) == 1
        or uploaded(id, version) then
      -- An older version seen again, still waiting or uploaded already.
      duplicates = duplicates + 1
    else
      -- The id was reused with another payload; the record key takes the
      -- newest, so lookups see it. The version it held is either
      -- - uploaded: nothing waits for it; the newest is queued;
      -- - claimed by a batch: it moves to a key of its own (keeping its
      --   expiry), where the batch finds it, and the newest is queued;
      -- - waiting in the queue: it moves likewise and is queued there,
      --   and the record key's queue entry passes to the newest.
      local digest = redis.sha1hex(current)
      if uploaded(id, digest) then
        queued[#queued + 1] = key
      else
        local previous = superseded_prefix .. digest .. ':' .. id
        local left = redis.call('PTTL', key)
        if left <= 0 then left = ttl * 1000 end
        redis.call('SET', previous, current, 'PX', left)
        if claimed(digest .. ':' .. key) then
          queued[#queued + 1] = key
        else
          queued[#queued + 1] = previous
        end
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

-- Records stored this hour, for monitor's memory projection.
if stored + superseded > 0 then
  local counter = stored_counter_prefix .. math.floor(tonumber(redis.call('TIME')[1]) / 3600)
  redis.call('INCRBY', counter, stored + superseded)
  redis.call('EXPIRE', counter, 90000)
end

-- One RPUSH and one XACK for the call (the worker keeps a call's entries
-- well under Lua's limit on unpacked values).
if #queued > 0 then redis.call('RPUSH', queue, unpack(queued)) end
redis.call('XACK', stream, group, unpack(acks))

return {stored, duplicates, superseded, dead_lettered, trimmed}
