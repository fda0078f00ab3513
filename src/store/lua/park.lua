-- Parks a batch the warehouse did not take: in one step its entries leave
-- the upload queue and its manifest moves from in flight to parked, so the
-- queue behind it goes on, and a later run retries it first. The batch was
-- cut from the head of the queue, so its entries are trimmed off the head;
-- any found elsewhere (there should be none) are removed one by one.
-- Flags (allow-oom) and the lock check come from `fenced!` in scripts.rs.
-- allow-oom: the uploader must work when Redis is full.
--
-- The versions it claimed stay claimed (see take_page.lua).
--
-- KEYS: 1 upload queue, 2 in-flight manifest, 3 parked manifest, 4 parked index,
--       5 the kind's upload lock
-- ARGV: 1 batch id, 2 manifest (marked parked), 3 its summary,
--       4 number of queue entries, then the entries' keys, then the run's
--       lock token
-- Returns the number of entries trimmed off the head of the queue, or -1
-- (changing nothing) when the in-flight manifest is gone or names another
-- batch: another run settled it or holds the kind.

local prefix_of_manifest = '{"batch_id":"' .. ARGV[1] .. '"'
if redis.call('GETRANGE', KEYS[2], 0, #prefix_of_manifest - 1) ~= prefix_of_manifest then
  return -1
end
local queue = KEYS[1]
local count = tonumber(ARGV[4])
local remove = {}
for i = 1, count do
  local key = ARGV[4 + i]
  remove[key] = (remove[key] or 0) + 1
end
local prefix = 0
if count > 0 then
  for _, key in ipairs(redis.call('LRANGE', queue, 0, count - 1)) do
    local left = remove[key]
    if not left or left == 0 then break end
    remove[key] = left - 1
    prefix = prefix + 1
  end
  if prefix > 0 then redis.call('LTRIM', queue, prefix, -1) end
  for key, left in pairs(remove) do
    if left > 0 then redis.call('LREM', queue, left, key) end
  end
end
redis.call('SET', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[3])
redis.call('DEL', KEYS[2])
return prefix
