-- Write vectors of the users of one bucket (one hash slot); see LAYOUT.md "Vectors".
-- KEYS[1] = dirty set of the bucket; then per user: meta hash, then one vector list per version.
-- ARGV[1] = history, ARGV[2] = ttl_ms (0 = none), ARGV[3] = number of versions n;
-- then per user: uid, expected window version ('' = leave the dirty mark alone),
-- n values (vector records, layout 1 or 2: same header; '' = nothing for that version).
-- Returns per user: cleared (1 cleared, 0 still dirty, -1 not asked), then per version:
-- the replaced head's computed_at_ms (-1 no head, -2 value skipped: head is newer, -3 no value,
-- -4 value refused: encoded from a window the user asked to forget, meta `xv`; see LAYOUT.md).
local hist = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local out = {}
local k = 2
local a = 4
while a <= #ARGV do
  local uid, expect = ARGV[a], ARGV[a + 1]
  local mk = KEYS[k]
  local res = {}
  local xv = tonumber(redis.call('HGET', mk, 'xv') or '0')
  for j = 1, n do
    local vk, val = KEYS[k + j], ARGV[a + 1 + j]
    local r, wv = -3, 0
    if #val >= 24 then
      r = -1
      wv = struct.unpack('<i8', val, 13)
      if wv < xv then
        r = -4
        val = ''
      end
    end
    if #val >= 24 then
      local head = redis.call('LINDEX', vk, 0)
      local action = 'push'
      if head and #head >= 24 and (string.byte(head, 1) == 1 or string.byte(head, 1) == 2) then
        local hts, hwv = struct.unpack('<i8i8', head, 5)
        r = hts
        if hwv > wv then
          action = 'skip'
          r = -2
        elseif hwv == wv then
          action = 'set'
        end
      end
      if action == 'push' then
        redis.call('LPUSH', vk, val)
        redis.call('LTRIM', vk, 0, hist - 1)
      elseif action == 'set' then
        redis.call('LSET', vk, 0, val)
      end
      if action ~= 'skip' and ttl > 0 then redis.call('PEXPIRE', vk, ttl) end
    end
    res[j] = r
  end
  local cleared = -1
  if expect ~= '' then
    cleared = 0
    if (redis.call('HGET', mk, 'v') or '0') == expect then
      redis.call('ZREM', KEYS[1], uid)
      cleared = 1
    end
  end
  out[#out + 1] = cleared
  for j = 1, n do out[#out + 1] = res[j] end
  k = k + 1 + n
  a = a + 2 + n
end
return out
