#!lua flags=allow-cross-slot-keys
-- Atomic window update for a chunk of users that live on one node. See LAYOUT.md.
-- KEYS[1] = the dirty set of the first user's bucket: it routes the call to the node that
-- serves that slot. The other keys are built here from each user's bucket and id (the
-- allow-cross-slot-keys flag lets a script touch any slot its node serves; a user whose slot
-- is elsewhere fails the call before any of that user's keys change, see LAYOUT.md).
-- ARGV[1] = max_events, ARGV[2] = horizon_ms, ARGV[3] = 1 to ignore stored offsets (a rebuild
-- replay after a shard lost its data: event-id dedup alone keeps it idempotent, see LAYOUT.md),
-- then per user: bucket, uid, partition, events, where
-- events packs, in offset order, per event: i64 offset, i64 ts_ms, u16 len + event id,
-- u16 len + record (little-endian).
-- Returns {applied, duplicate, replayed, trimmed, forgotten, len_1, ..., len_k} (len: window
-- length after the update, for each user whose window changed; forgotten: events at or before
-- the user's forget time, meta `x`, refused: see LAYOUT.md "Forgetting a user").
-- The meta hash caches newest (t) and oldest (f) event time and the count (n), so the
-- common case (nothing to trim) costs six calls per user (HMGET meta, HMGET ids, HSET records,
-- ZADD ids, HSET meta, ZADD dirty), whatever the number of its events.
local maxn = tonumber(ARGV[1])
local horizon = tonumber(ARGV[2])
local rebuild = ARGV[3] == '1'
local applied, dup, replayed, trimmed, forgotten = 0, 0, 0, 0, 0
local lens = {}
local function int(x) return string.format('%d', x) end
-- redis.call(cmd, key, list[1..n]) in slices: Lua's unpack() is limited to a few thousand
-- values. `step` is even so that field/value and score/member pairs stay whole.
local function call_in_slices(cmd, key, list, n, step)
  local out = {}
  for lo = 1, n, step do
    local r = redis.call(cmd, key, unpack(list, lo, math.min(n, lo + step - 1)))
    if type(r) == 'table' then
      for j = 1, #r do out[#out + 1] = r[j] end
    end
  end
  return out
end
for i = 4, #ARGV, 4 do
  local pre, uid, part, blob = 'p:{' .. ARGV[i] .. '}:', ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local wk, ek, mk = pre .. 'w:' .. uid, pre .. 'e:' .. uid, pre .. 'm:' .. uid
  local field = 'o' .. part
  local m = redis.call('HMGET', mk, field, 'v', 't', 'f', 'n', 'x')
  local pos = tonumber(m[1] or '-1')
  local ver, newest = tonumber(m[2] or '0'), tonumber(m[3] or '-1')
  local oldest, card = tonumber(m[4] or '-1'), tonumber(m[5] or '0')
  local forgot = tonumber(m[6] or '-1')
  local top, added, upd_newest = pos, 0, nil
  -- the user's events that are not replays, in offset order
  local eids, recs, tss, cn = {}, {}, {}, 0
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
      if ts <= forgot then
        forgotten = forgotten + 1
      else
        cn = cn + 1
        eids[cn], recs[cn], tss[cn] = eid, rec, ts
      end
    end
  end
  -- dedup against the stored ids and within the call, then one HSET and one ZADD per user
  -- (each command a script runs costs microseconds of fixed overhead on the server)
  if cn > 0 then
    local have = call_in_slices('HMGET', ek, eids, cn, 4000)
    local seen, hargs, zargs, hn = {}, {}, {}, 0
    for j = 1, cn do
      local eid, ts = eids[j], tss[j]
      if have[j] or seen[eid] then
        dup = dup + 1
      else
        seen[eid] = true
        hargs[hn + 1], hargs[hn + 2] = eid, recs[j]
        zargs[hn + 1], zargs[hn + 2] = ts, eid
        hn = hn + 2
        applied, added, card = applied + 1, added + 1, card + 1
        if upd_newest == nil or ts > upd_newest then upd_newest = ts end
        if ts > newest then newest = ts end
        if oldest < 0 or ts < oldest then oldest = ts end
      end
    end
    if hn > 0 then
      call_in_slices('HSET', ek, hargs, hn, 4000)
      call_in_slices('ZADD', wk, zargs, hn, 4000)
    end
  end
  if added > 0 then
    local cut = false
    if oldest < newest - horizon then
      local cutoff = '(' .. int(newest - horizon)
      local old = redis.call('ZRANGEBYSCORE', wk, '-inf', cutoff)
      redis.call('ZREMRANGEBYSCORE', wk, '-inf', cutoff)
      call_in_slices('HDEL', ek, old, #old, 4000)
      trimmed, card, cut = trimmed + #old, card - #old, true
    end
    if card > maxn then
      local extra = redis.call('ZRANGE', wk, 0, card - maxn - 1)
      redis.call('ZREMRANGEBYRANK', wk, 0, card - maxn - 1)
      call_in_slices('HDEL', ek, extra, #extra, 4000)
      trimmed, card, cut = trimmed + #extra, maxn, true
    end
    if cut then oldest = tonumber(redis.call('ZRANGE', wk, 0, 0, 'WITHSCORES')[2]) end
    redis.call('HSET', mk, field, int(top), 'v', int(ver + 1), 't', int(newest),
      'f', int(oldest), 'n', int(card))
    redis.call('ZADD', pre .. 'dirty', 'NX', int(upd_newest), uid)
    lens[#lens + 1] = card
  elseif top > pos then
    redis.call('HSET', mk, field, int(top))
  end
end
local out = {applied, dup, replayed, trimmed, forgotten}
for j = 1, #lens do out[#out + 1] = lens[j] end
return out
