-- Prepended to every script by services/store/scripts.py (after a `#!lua` flags line):
-- what more than one script reads of a vector record (LAYOUT.md "Vector value").
-- score_block(rec): the offset of a layout-2/3 record's u16 score count and the count; nil
-- for layout 1 or a record too short to hold them.
-- audience_prefix(vk, uid): p:{B}:v:<ver>:<uid> -> p:{B}:a:<ver>: (the version's audience
-- sets are that prefix and the column number).
local function score_block(rec)
  local lay = string.byte(rec, 1)
  if #rec < 24 or (lay ~= 2 and lay ~= 3) then return nil end
  local off = 25 + struct.unpack('<I2', rec, 3) * ((string.byte(rec, 2) == 2) and 2 or 4)
  if #rec < off + 1 then return nil end
  return off, (struct.unpack('<I2', rec, off))
end
local function audience_prefix(vk, uid)
  return (string.gsub(string.sub(vk, 1, #vk - #uid), '^(p:{%d+}):v:', '%1:a:', 1))
end
