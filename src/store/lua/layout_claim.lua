-- Claims a layout version in this database (see layout.rs): an older or
-- missing one is raised to it, a newer one refused with NEWER_LAYOUT,
-- changing nothing. allow-oom: a full Redis must still let the workers and
-- the uploader, which free memory, start.
--
-- KEYS: 1 flit:layout; ARGV: 1 this binary's layout
-- Returns the version that was there (1 when none was).

local held = tonumber(redis.call('GET', KEYS[1]) or '1') or 0
local mine = tonumber(ARGV[1])
if held > mine then
  return redis.error_reply('NEWER_LAYOUT Redis holds layout ' .. held .. ' in ' .. KEYS[1] ..
    ', this flit-cache knows layouts up to ' .. mine .. '; run the newer flit-cache (nothing was changed)')
end
if held < mine or redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], mine) end
return held
