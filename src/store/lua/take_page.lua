-- Reads one page of the upload queue for a batch and claims, in the same
-- step, each version it reads: field `<sha1 of the value>:<key>` in the
-- claims hash, with the batch's id as value. A claimed version belongs to its batch until the batch is
-- settled: when a newer version of the key arrives meanwhile, ingest moves
-- the claimed one aside without queueing it again (the batch uploads it)
-- and gives the newer one a queue entry of its own. Reading and claiming
-- at once leaves no moment in which a version is read but not yet claimed.
-- Flags (allow-oom) and the lock check come from `fenced!` in scripts.rs.
-- allow-oom: the uploader must work when Redis is full.
--
-- Each version claimed is also appended, key then value as read, to the
-- taking list: it becomes the batch's entries list when its manifest is
-- saved (upload_queue.rs, START_IN_FLIGHT), and is what the batch writes however
-- often it is recovered. The first page starts the list afresh (a take
-- that died leaves one behind). The queue itself is only read here: the
-- entries leave it when the manifest is saved.
--
-- A version already uploaded (in the uploaded index or the mark beside
-- its record, settle_slice.lua), claimed by another batch, or met earlier
-- in this batch, is answered as such and not claimed: its entry is a stale
-- one, and the version is never uploaded twice. The index is read once
-- for the page (HMGET). A record found so (stored again after its upload)
-- is capped at the index field's deadline, so it never outlives it; a
-- version moved aside by a layout-3 worker gives the newest at its record
-- key an entry again (see below).
--
-- A page is short (upload_queue.rs bounds it in entries and bytes) so the call
-- runs about a millisecond.
--
-- KEYS: 1 upload queue, 2 claims hash, 3 taking list, 4 the uploaded index,
--       5 the layout version (flit:layout), 6 the kind's upload lock
-- ARGV: 1 first index, 2 most entries, 3 most payload bytes, 4 record
--       prefix, 5 superseded prefix, 6 uploaded-mark prefix, 7 the batch's
--       id (each claim's value: settling acts only on versions its own
--       batch still claims), 8 this binary's layout version, 9 the run's
--       lock token
-- Returns key, value (false when the record is gone), taken (1: the
-- version is uploaded or claimed already; 0: claimed now and appended to
-- the taking list), ... for the entries read: it stops after the entry
-- whose value reaches the byte budget.

-- A run that started before a newer binary raised the layout stops at its
-- next page, changing nothing (the run claimed the layout only at start).
local layout = tonumber(redis.call('GET', KEYS[5]) or '1') or 0
if layout > tonumber(ARGV[8]) then
  return redis.error_reply('NEWER_LAYOUT Redis holds layout ' .. layout .. ' in ' .. KEYS[5] ..
    ', this flit-cache knows layouts up to ' .. ARGV[8] .. '; nothing was taken')
end

local first = tonumber(ARGV[1])
if first == 0 then redis.call('UNLINK', KEYS[3]) end
local keys = redis.call('LRANGE', KEYS[1], first, first + tonumber(ARGV[2]) - 1)
local budget = tonumber(ARGV[3])
local record_prefix, superseded_prefix, mark_prefix = ARGV[4], ARGV[5], ARGV[6]
-- The record id a queue key names: `<record prefix><id>` or
-- `<superseded prefix><40 hex digits>:<id>`.
local function id_of(key)
  if key:sub(1, #record_prefix) == record_prefix then return key:sub(#record_prefix + 1) end
  return key:sub(#superseded_prefix + 42)
end
local out, bytes, claims, pairs_read, here = {}, 0, {}, {}, {}
local caps, requeue = {}, {}
local held = {}
if #keys > 0 then
  local ids = {}
  for n, key in ipairs(keys) do ids[n] = id_of(key) end
  held = redis.call('HMGET', KEYS[4], unpack(ids))
end
for n, key in ipairs(keys) do
  local value = redis.call('GET', key)
  local taken = 0
  if value then
    local digest = redis.sha1hex(value)
    local field = digest .. ':' .. key
    local id = id_of(key)
    local indexed = held[n] and held[n]:sub(1, 40) == digest
    local marked = not indexed and redis.call('HEXISTS', mark_prefix .. id, digest) == 1
    if indexed or marked then
      taken = 1
      if key:sub(1, #record_prefix) == record_prefix then
        -- Stored again after its upload (a late copy once the record was
        -- gone): it must not outlive what says it was uploaded, or a later
        -- version of the id would take it for one still waiting.
        if indexed then
          caps[#caps + 1] = {'EXPIREAT', key, tonumber(held[n]:sub(41)) or 0}
        else
          caps[#caps + 1] = {'PEXPIRE', key, redis.call('PTTL', mark_prefix .. id)}
        end
      else
        -- A version moved aside by a layout-3 worker, which took the
        -- uploaded record for one still waiting and queued only the moved
        -- key: the newest at the record key gets an entry again unless it
        -- is uploaded or claimed (a second entry is a stale one, harmless).
        local record = record_prefix .. id
        local newest = redis.call('GET', record)
        if newest then
          local newest_digest = redis.sha1hex(newest)
          if not (held[n] and held[n]:sub(1, 40) == newest_digest)
            and redis.call('HEXISTS', mark_prefix .. id, newest_digest) == 0
            and redis.call('HEXISTS', KEYS[2], newest_digest .. ':' .. record) == 0 then
            requeue[#requeue + 1] = record
          end
        end
      end
    elseif here[field] or redis.call('HEXISTS', KEYS[2], field) == 1 then
      taken = 1
    else
      here[field] = true
      claims[#claims + 1] = field
      claims[#claims + 1] = ARGV[7]
      pairs_read[#pairs_read + 1] = key
      pairs_read[#pairs_read + 1] = value
    end
  end
  out[#out + 1] = key
  out[#out + 1] = value
  out[#out + 1] = taken
  if value and taken == 0 then
    bytes = bytes + #value
    if bytes >= budget then break end
  end
end
if #claims > 0 then
  redis.call('HSET', KEYS[2], unpack(claims))
  redis.call('RPUSH', KEYS[3], unpack(pairs_read))
end
for _, cap in ipairs(caps) do
  if cap[3] > 0 then redis.call(cap[1], cap[2], cap[3], 'LT') end
end
-- At the tail: the entries this take read keep their positions.
if #requeue > 0 then redis.call('RPUSH', KEYS[1], unpack(requeue)) end
return out
