-- Takes one load job from a table's budget over a rolling window, as
-- BigQuery refills its quota (see upload_budget.rs). Runs at maxmemory too:
-- counting must not stop an upload that frees memory.
--
-- KEYS: 1 the table's jobs (a sorted set scored by start time in ms)
-- ARGV: 1 window in ms, 2 budget, 3 a member unique to this job
-- Returns the jobs in the window counting this one; above the budget, the
-- job was not taken.

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - window))
local used = redis.call('ZCARD', KEYS[1])
if used >= tonumber(ARGV[2]) then return used + 1 end
redis.call('ZADD', KEYS[1], string.format('%.0f', now), ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
return used + 1
