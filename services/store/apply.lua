-- Atomic window update for the users of one bucket (one hash slot). See LAYOUT.md.
-- KEYS[1] = dirty set of the bucket; then per user: window zset, event hash, meta hash.
-- ARGV[1] = max_events, ARGV[2] = horizon_ms, ARGV[3] = 1 to ignore stored offsets (a rebuild
-- replay after a shard lost its data: event-id dedup alone keeps it idempotent, see LAYOUT.md),
-- then per user: uid, partition, events, where
-- events packs, in offset order, per event: i64 offset, i64 ts_ms, u16 len + event id,
-- u16 len + record (little-endian).
-- Returns {applied, duplicate, replayed, trimmed, len_1, ..., len_k} (len: window length
-- after the update, for each user whose window changed).
-- The meta hash caches newest (t) and oldest (f) event time and the count (n), so the
-- common case (nothing to trim) costs one HMGET, one HSET and two calls per event.
local maxn = tonumber(ARGV[1])
local horizon = tonumber(ARGV[2])
local rebuild = ARGV[3] == '1'
local applied, dup, replayed, trimmed = 0, 0, 0, 0
local lens = {}
local k = 2
local function int(x) return string.format('%d', x) end
for i = 4, #ARGV, 3 do
  local uid, part, blob = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local wk, ek, mk = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  k = k + 3
  local field = 'o' .. part
  local m = redis.call('HMGET', mk, field, 'v', 't', 'f', 'n')
  local pos = tonumber(m[1] or '-1')
  local ver, newest = tonumber(m[2] or '0'), tonumber(m[3] or '-1')
  local oldest, card = tonumber(m[4] or '-1'), tonumber(m[5] or '0')
  local top, added, upd_newest = pos, 0, nil
  local p = 1
  while p <= #blob do
    local off, ts, n = struct.unpack('<i8i8I2', blob, p)
    local eid = string.sub(blob, p + 18, p + 17 + n)
    p = p + 18 + n
    local rlen = struct.unpack('<I2', blob, p)
    local rec = string.sub(blob, p + 2, p + 1 + rlen)
    p = p + 2 + rlen
    if off <= pos and not rebuild then
      replayed = replayed + 1
    else
      if off > top then top = off end
      if redis.call('HSETNX', ek, eid, rec) == 1 then
        redis.call('ZADD', wk, int(ts), eid)
        applied, added, card = applied + 1, added + 1, card + 1
        if upd_newest == nil or ts > upd_newest then upd_newest = ts end
        if ts > newest then newest = ts end
        if oldest < 0 or ts < oldest then oldest = ts end
      else
        dup = dup + 1
      end
    end
  end
  if added > 0 then
    local cut = false
    if oldest < newest - horizon then
      local cutoff = '(' .. int(newest - horizon)
      local old = redis.call('ZRANGEBYSCORE', wk, '-inf', cutoff)
      redis.call('ZREMRANGEBYSCORE', wk, '-inf', cutoff)
      redis.call('HDEL', ek, unpack(old))
      trimmed, card, cut = trimmed + #old, card - #old, true
    end
    if card > maxn then
      local extra = redis.call('ZRANGE', wk, 0, card - maxn - 1)
      redis.call('ZREMRANGEBYRANK', wk, 0, card - maxn - 1)
      redis.call('HDEL', ek, unpack(extra))
      trimmed, card, cut = trimmed + #extra, maxn, true
    end
    if cut then oldest = tonumber(redis.call('ZRANGE', wk, 0, 0, 'WITHSCORES')[2]) end
    redis.call('HSET', mk, field, int(top), 'v', int(ver + 1), 't', int(newest),
      'f', int(oldest), 'n', int(card))
    redis.call('ZADD', KEYS[1], 'NX', int(upd_newest), uid)
    lens[#lens + 1] = card
  elseif top > pos then
    redis.call('HSET', mk, field, int(top))
  end
end
local out = {applied, dup, replayed, trimmed}
for j = 1, #lens do out[#out + 1] = lens[j] end
return out
