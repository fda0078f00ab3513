-- Uploaded marks (`tx!{id}`): the 40-digit SHA-1s of a record's uploaded
-- versions, one after the other. Put in front of every script that reads
-- them (commit_batch.lua, take_page.lua, finalize_batch.lua).
-- Whether `digest` is among `marks` (the mark's value, or false).
local function is_marked(marks, digest)
  if not marks then return false end
  for at = 1, #marks, 40 do
    if marks:sub(at, at + 39) == digest then return true end
  end
  return false
end
