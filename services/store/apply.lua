-- Atomic window update for the users of one bucket (one hash slot). See LAYOUT.md.
-- KEYS[1] = dirty set of the bucket; then per user: window zset, event hash, meta hash.
-- ARGV[1] = max_events, ARGV[2] = horizon_ms, then per user: uid, partition, events, where
-- events packs, in offset order, per event: i64 offset, i64 ts_ms, u16 len + event id,
-- u16 len + record (little-endian).
-- Returns {applied, duplicate, replayed, trimmed, len_1, ..., len_k} (len: window length
-- after the update, for each user whose window changed).
local maxn = tonumber(ARGV[1])
local horizon = tonumber(ARGV[2])
local applied, dup, replayed, trimmed = 0, 0, 0, 0
local lens = {}
local k = 2
for i = 3, #ARGV, 3 do
  local uid, part, blob = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local wk, ek, mk = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  k = k + 3
  local field = 'o' .. part
  local pos = tonumber(redis.call('HGET', mk, field) or '-1')
  local top, changed, newest = pos, 0, nil
  local p = 1
  while p <= #blob do
    local off, ts, n = struct.unpack('<i8i8I2', blob, p)
    local eid = string.sub(blob, p + 18, p + 17 + n)
    p = p + 18 + n
    local m = struct.unpack('<I2', blob, p)
    local rec = string.sub(blob, p + 2, p + 1 + m)
    p = p + 2 + m
    if off <= pos then
      replayed = replayed + 1
    else
      if off > top then top = off end
      if redis.call('HSETNX', ek, eid, rec) == 1 then
        redis.call('ZADD', wk, ts, eid)
        applied = applied + 1
        changed = changed + 1
        if newest == nil or ts > newest then newest = ts end
      else
        dup = dup + 1
      end
    end
  end
  if top > pos then redis.call('HSET', mk, field, string.format('%d', top)) end
  if changed > 0 then
    local last = redis.call('ZRANGE', wk, -1, -1, 'WITHSCORES')
    local cutoff = '(' .. string.format('%d', tonumber(last[2]) - horizon)
    local old = redis.call('ZRANGEBYSCORE', wk, '-inf', cutoff)
    if #old > 0 then
      redis.call('ZREMRANGEBYSCORE', wk, '-inf', cutoff)
      redis.call('HDEL', ek, unpack(old))
      trimmed = trimmed + #old
    end
    local card = redis.call('ZCARD', wk)
    if card > maxn then
      local extra = redis.call('ZRANGE', wk, 0, card - maxn - 1)
      redis.call('ZREMRANGEBYRANK', wk, 0, card - maxn - 1)
      redis.call('HDEL', ek, unpack(extra))
      trimmed = trimmed + #extra
      card = maxn
    end
    redis.call('HINCRBY', mk, 'v', 1)
    redis.call('ZADD', KEYS[1], 'NX', string.format('%d', newest), uid)
    lens[#lens + 1] = card
  end
end
local out = {applied, dup, replayed, trimmed}
for j = 1, #lens do out[#out + 1] = lens[j] end
return out
