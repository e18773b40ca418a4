-- Atomic window update for the users of one bucket (one hash slot). See LAYOUT.md.
-- KEYS[1] = dirty set of the bucket; then per user: window zset, event hash, meta hash.
-- ARGV[1] = max_events, ARGV[2] = horizon_ms, then per user:
--   uid, partition, n, then n x (offset, event_id, ts_ms, record)  -- in offset order
-- Returns {applied, duplicate, replayed, trimmed, len_1, ..., len_k} (len: window length
-- after the update, for each user whose window changed).
local maxn = tonumber(ARGV[1])
local horizon = tonumber(ARGV[2])
local applied, dup, replayed, trimmed = 0, 0, 0, 0
local lens = {}
local i, k = 3, 2
while i <= #ARGV do
  local uid, part, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
  local wk, ek, mk = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  k = k + 3
  local field = 'o' .. part
  local pos = tonumber(redis.call('HGET', mk, field) or '-1')
  local top, changed, newest = pos, 0, nil
  for _ = 1, n do
    local off, eid, ts, rec = tonumber(ARGV[i]), ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3]
    i = i + 4
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
    local cutoff = tonumber(last[2]) - horizon
    local old = redis.call('ZRANGEBYSCORE', wk, '-inf', '(' .. string.format('%d', cutoff))
    if #old > 0 then
      redis.call('ZREMRANGEBYSCORE', wk, '-inf', '(' .. string.format('%d', cutoff))
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
