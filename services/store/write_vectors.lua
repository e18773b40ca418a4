-- Write vectors of the users of one bucket (one hash slot); see LAYOUT.md "Vectors".
-- KEYS[1] = dirty set of the bucket, KEYS[2] = its rescore set; then per user: meta hash,
-- then one vector list per version.
-- ARGV[1] = history, ARGV[2] = ttl_ms (0 = none), ARGV[3] = number of versions n;
-- ARGV[4 .. 3 + n] = per version, its audience mask: '' = every score column, else one
-- character per column, '1' = kept in the audience sets; then per user: uid, expected
-- window version ('' = leave the dirty mark alone), rescore time ms ('' = leave the
-- rescore set alone, '-1' = out of it; a user forgotten since is taken out whatever it
-- says), n values (vector records, layouts 1 to 3: same header; '' = nothing for that
-- version).
-- Returns per user: cleared (1 cleared, 0 still dirty, -1 not asked), then per version:
-- the replaced head's computed_at_ms (-1 no head, -2 value skipped: head is newer, -3 no value,
-- -4 value refused: encoded from a window the user asked to forget, meta `xv`; see LAYOUT.md).
-- A layout-2 or -3 value also puts the user, at each score, into the version's audience sets
-- p:{B}:a:<ver>:<column> (sorted sets, same slot as the vector list; LAYOUT.md "Audiences"),
-- in the same step and only when the value is written (a skipped value changes nothing); a
-- written value drops the entries it folded in from the version's short-term state.
local hist = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local function half(h)  -- IEEE half float (u16) -> number
  local sign = 1
  if h >= 32768 then sign, h = -1, h - 32768 end
  local e, m = math.floor(h / 1024), h % 1024
  if e == 0 then return sign * math.ldexp(m, -24) end
  if e == 31 then return sign * math.huge end
  return sign * math.ldexp(m + 1024, e - 25)
end
local function audience(vk, uid, val, mask)
  local off, ns = score_block(val)  -- layout 3: scores as in 2, then the marker
  if off == nil then return end
  local prefix = audience_prefix(vk, uid)
  for j = 0, ns - 1 do
    if mask == '' or string.byte(mask, j + 1) == 49 then
      redis.call('ZADD', prefix .. j, half(struct.unpack('<I2', val, off + 2 + 2 * j)), uid)
      -- with a TTL the set lives as long as its version is written (a retired one ages out)
      if ttl > 0 then redis.call('PEXPIRE', prefix .. j, ttl) end
    end
  end
end
-- The version's short-term state (meta field s<ver>, LAYOUT.md) keeps only the entries of
-- window versions after `wv`, the newest written vector's: the others are folded in it.
local function fold_state(mk, vk, wv)
  local ver = string.match(vk, '^p:{%d+}:v:([^:]*):')
  redis.call('HDEL', mk, 'd' .. ver)  -- ingest's delta was computed on an older vector
  local field = 's' .. ver
  local st = redis.call('HGET', mk, field)
  if not st then return end
  if #st < 24 then return end
  local esize = 24 + 4 * struct.unpack('<I4', st, 21)  -- every entry has the first's size
  local p = 1
  while p + esize - 1 <= #st and struct.unpack('<i8', st, p + 8) <= wv do
    p = p + esize
  end
  if p > #st then
    redis.call('HDEL', mk, field)
  elseif p > 1 then
    redis.call('HSET', mk, field, string.sub(st, p))
  end
end
local n = tonumber(ARGV[3])
local out = {}
local k = 3
local a = 4 + n
while a <= #ARGV do
  local uid, expect, due = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local mk = KEYS[k]
  local res = {}
  local xv = tonumber(redis.call('HGET', mk, 'xv') or '0')
  local forgotten = false
  for j = 1, n do
    local vk, val = KEYS[k + j], ARGV[a + 2 + j]
    local r, wv = -3, 0
    if #val >= 24 then
      r = -1
      wv = struct.unpack('<i8', val, 13)
      if wv < xv then
        r = -4
        val = ''
        forgotten = true
      end
    end
    if #val >= 24 then
      local head = redis.call('LINDEX', vk, 0)
      local action = 'push'
      if head and #head >= 24 and string.byte(head, 1) >= 1 and string.byte(head, 1) <= 3 then
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
      if action ~= 'skip' then
        audience(vk, uid, val, ARGV[3 + j])
        fold_state(mk, vk, wv)
      end
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
  if forgotten then redis.call('HSET', mk, 'xp', '1') end  -- its tombstone is owed
  if due == '-1' or (due ~= '' and forgotten) then
    redis.call('ZREM', KEYS[2], uid)
  elseif due ~= '' then
    redis.call('ZADD', KEYS[2], due, uid)
  end
  out[#out + 1] = cleared
  for j = 1, n do out[#out + 1] = res[j] end
  k = k + 1 + n
  a = a + 3 + n
end
return out
