-- Moves dead letters back, exactly once each: an event now acceptable goes
-- back onto its event stream with its original data, and leaves the
-- dead-letter stream in the same step; one still refused is replaced by a
-- dead letter with its new reason. An entry already gone (moved by an
-- earlier, interrupted run) is skipped, so a rerun never doubles anything.
--
-- KEYS: 1 dead-letter stream, 2 event stream
-- ARGV: 1 data field name, 2 number of actions, then per action:
--       dead entry id, 'back' or 'replace', then
--         back:    the data to add to the event stream
--         replace: new reason code, new reason
-- Returns, per action, the new entry id, or false when the entry was gone.
local dead, stream, data_field = KEYS[1], KEYS[2], ARGV[1]
local count = tonumber(ARGV[2])
local results = {}
local i = 3
for n = 1, count do
  local id, action = ARGV[i], ARGV[i + 1]
  local found = redis.call('XRANGE', dead, id, id)
  if #found == 0 then
    results[n] = false
    i = i + (action == 'back' and 3 or 4)
  elseif action == 'back' then
    results[n] = redis.call('XADD', stream, '*', data_field, ARGV[i + 2])
    redis.call('XDEL', dead, id)
    i = i + 3
  else
    local fields = found[1][2]
    local new = {}
    for f = 1, #fields, 2 do
      local name, value = fields[f], fields[f + 1]
      if name == 'reason_code' then value = ARGV[i + 2]
      elseif name == 'reason' then value = ARGV[i + 3] end
      if name ~= 'redriven_from' then
        new[#new + 1] = name
        new[#new + 1] = value
      end
    end
    new[#new + 1] = 'redriven_from'
    new[#new + 1] = id
    results[n] = redis.call('XADD', dead, '*', unpack(new))
    redis.call('XDEL', dead, id)
    i = i + 4
  end
end
return results
