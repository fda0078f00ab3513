-- Records a new in-flight manifest only where none is (a run that lost the
-- lock cannot overwrite the batch another run has in flight), and in the
-- same step takes the entries the batch read off the head of the queue and
-- makes the taking list the batch's entries list. Nothing but this run
-- (under the lock) removes from the queue's head, and ingest only appends,
-- so the first ARGV[2] entries are the ones the pages read. O(batch) in list
-- nodes freed, with no per-entry script work. Runs even at maxmemory: the
-- uploader is what frees memory.
-- Flags (allow-oom) and the lock check come from `fenced!` in scripts.rs.
--
-- KEYS: 1 manifest, 2 upload queue, 3 taking list, 4 the batch's entries
--       list, 5 the kind's upload lock
-- ARGV: 1 manifest, 2 entries read, 3 versions claimed (the taking list
--       must hold as many pairs, or the manifest's positions would name
--       nothing), 4 the run's lock token
-- Returns 1, or 0 when another batch is in flight.

if redis.call('LLEN', KEYS[3]) ~= 2 * tonumber(ARGV[3]) then
  return redis.error_reply('ERR ' .. KEYS[3] .. ' does not hold the ' .. ARGV[3] ..
    ' versions this batch claimed (changed by hand?); nothing was changed')
end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 0 end
local read = tonumber(ARGV[2])
if read > 0 then redis.call('LTRIM', KEYS[2], read, -1) end
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('RENAME', KEYS[3], KEYS[4]) end
return 1
