-- Releases claims no batch owns: an upload killed after it claimed versions
-- (take_page.lua) but before it saved its manifest leaves them behind. Each
-- is undone as if it had never been made: when ingest, seeing the claim,
-- moved a newer version's predecessor aside without queueing it and gave
-- the record key an extra queue entry, the moved copy is queued again and
-- the extra entry removed. Run at the start of a run, under the upload lock.
-- Flags (allow-oom) and the lock check come from `fenced!` in scripts.rs.
-- allow-oom: the uploader must work when Redis is full.
--
-- KEYS: 1 upload queue, 2 claims hash, 3 the kind's upload lock
-- ARGV: 1 superseded prefix, 2 record prefix, then claim fields
--       (`<sha1>:<record key>`), then the run's lock token
-- Returns the number of moved copies queued again.

local queue, claims = KEYS[1], KEYS[2]
local superseded, record_prefix = ARGV[1], ARGV[2]
local requeued = 0
for i = 3, #ARGV - 1 do
  local field = ARGV[i]
  if redis.call('HDEL', claims, field) == 1 then
    local digest, key = string.match(field, '^(%x+):(.*)$')
    local current = key and redis.call('GET', key)
    local replaced = key and (not current or redis.sha1hex(current) ~= digest)
    if replaced and key:sub(1, #record_prefix) == record_prefix then
      local moved = superseded .. digest .. ':' .. key:sub(#record_prefix + 1)
      if redis.call('EXISTS', moved) == 1 then
        redis.call('RPUSH', queue, moved)
        -- The extra entry is still queued only while the newer version is:
        -- once that was uploaded (or expired), its entry went with it.
        if current then redis.call('LREM', queue, -1, key) end
        requeued = requeued + 1
      end
    end
  end
end
return requeued
