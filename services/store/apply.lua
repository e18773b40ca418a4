#!lua flags=allow-cross-slot-keys
-- Atomic window update for a chunk of users that live on one node. See LAYOUT.md.
-- KEYS[1] = the dirty set of the first user's bucket: it routes the call to the node that
-- serves that slot. The other keys are built here from each user's bucket and id (the
-- allow-cross-slot-keys flag lets a script touch any slot its node serves; a user whose slot
-- is elsewhere fails the call before any of that user's keys change, see LAYOUT.md).
-- ARGV[1] = max_events, ARGV[2] = horizon_ms, ARGV[3] = 1 to ignore stored offsets (a rebuild
-- replay after a shard lost its data: event-id dedup alone keeps it idempotent, see LAYOUT.md),
-- ARGV[4] = K, the model versions whose short-term state this call keeps (0: none), then K
-- pairs (version, row bytes), then the state's cap (entries per version) (LAYOUT.md
-- "Short-term state": meta fields s<ver>, sv); then per user: bucket, uid, partition,
-- events, rows, where
-- events packs, in offset order, per event: i64 offset, i64 ts_ms, u16 len + event id,
-- u16 len + record (little-endian), and rows, per event in the same order, its K rows one
-- after the other (float32 bytes; empty: no state for this user in this call).
-- Returns {applied, duplicate, replayed, trimmed, forgotten, len_1, ..., len_k} (len: window
-- length after the update, for each user whose window changed; forgotten: events at or before
-- the user's forget time, meta `x`, refused: see LAYOUT.md "Forgetting a user").
-- The meta hash caches newest (t) and oldest (f) event time and the count (n), so the
-- common case (nothing to trim) costs six calls per user (HMGET meta, HMGET ids, HSET records,
-- ZADD ids, HSET meta, ZADD dirty), whatever the number of its events.
local maxn = tonumber(ARGV[1])
local horizon = tonumber(ARGV[2])
local rebuild = ARGV[3] == '1'
local nstate = tonumber(ARGV[4])
local svers, ssizes, soffs, sfields, stride = {}, {}, {}, {}, 0
for k = 1, nstate do
  svers[k], ssizes[k], soffs[k] = ARGV[3 + 2 * k], tonumber(ARGV[4 + 2 * k]), stride
  sfields[k] = 's' .. svers[k]
  stride = stride + ssizes[k]
end
local scap = tonumber(ARGV[5 + 2 * nstate])
local first_user = 6 + 2 * nstate
local svlist = table.concat(svers, ',')
if nstate > 0 then sfields[nstate + 1] = 'sv' end
-- A state field (LAYOUT.md "Short-term state"): entries oldest first, all `esize` bytes;
-- the oldest dropped beyond the cap.
local function capped(st, esize)
  if #st <= scap * esize then return st end
  return string.sub(st, #st - scap * esize + 1)
end
-- The meta fields of the short-term state after an APPLY that added `added_ev` ({id, ts,
-- index in the call}) of the call's `nev` events for the user and made window version `ver`,
-- appended to `hargs` (HSET's field/value pairs); `m` is the user's meta HMGET (state fields
-- from m[7]), `rows` the user's rows.
local function state_args(mk, m, rows, nev, added_ev, ver, hargs)
  if nstate == 0 then return end
  local had = m[7 + nstate]  -- `sv`: the versions whose fields the user has
  if had and had ~= svlist then  -- a version no longer kept (retired): its field goes
    local keep = {}
    for k = 1, nstate do keep[svers[k]] = true end
    for name in string.gmatch(had, '[^,]+') do
      if not keep[name] then redis.call('HDEL', mk, 's' .. name, 'd' .. name) end
    end
  end
  if had ~= svlist then hargs[#hargs + 1], hargs[#hargs + 2] = 'sv', svlist end
  if #rows ~= stride * nev then return end  -- no rows (one per event of the call): no entries
  for k = 1, nstate do
    local esize = 24 + ssizes[k]
    local parts = {m[6 + k] or ''}
    if #parts[1] % esize ~= 0 then parts[1] = '' end  -- rows of another length: start over
    for j = 1, #added_ev do
      local at = (added_ev[j][3] - 1) * stride + soffs[k] + 1
      parts[#parts + 1] = struct.pack('<i8i8I4I4', added_ev[j][2], ver, #added_ev,
        ssizes[k] / 4) .. string.sub(rows, at, at + ssizes[k] - 1)
    end
    hargs[#hargs + 1], hargs[#hargs + 2] = sfields[k], capped(table.concat(parts), esize)
  end
end
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
for i = first_user, #ARGV, 5 do
  local pre, uid, part, blob = 'p:{' .. ARGV[i] .. '}:', ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local rows = ARGV[i + 4]
  local wk, ek, mk = pre .. 'w:' .. uid, pre .. 'e:' .. uid, pre .. 'm:' .. uid
  local field = 'o' .. part
  -- every key this user's update writes is touched before any write: mid-migration some
  -- of a slot's keys are on another node, and a write that failed on one of them after
  -- others went in left half an update the retry took for duplicates (no rollback)
  redis.call('EXISTS', wk, ek, mk, pre .. 'dirty')
  local m = redis.call('HMGET', mk, field, 'v', 't', 'f', 'n', 'x', unpack(sfields))
  local pos = tonumber(m[1] or '-1')
  local ver, newest = tonumber(m[2] or '0'), tonumber(m[3] or '-1')
  local oldest, card = tonumber(m[4] or '-1'), tonumber(m[5] or '0')
  local forgot = tonumber(m[6] or '-1')
  local top, added, upd_newest = pos, 0, nil
  local added_ev = {}  -- {id, ts, index in the call} of each added event (the state's rows)
  -- the user's events that are not replays, in offset order
  local eids, recs, tss, idx, cn, q = {}, {}, {}, {}, 0, 0
  local p = 1
  while p <= #blob do
    q = q + 1
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
        eids[cn], recs[cn], tss[cn], idx[cn] = eid, rec, ts, q
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
        added_ev[#added_ev + 1] = {eid, ts, idx[j]}
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
    local margs = {field, int(top), 'v', int(ver + 1), 't', int(newest), 'f', int(oldest),
      'n', int(card)}
    state_args(mk, m, rows, q, added_ev, ver + 1, margs)
    redis.call('HSET', mk, unpack(margs))
    redis.call('ZADD', pre .. 'dirty', 'NX', int(upd_newest), uid)
    lens[#lens + 1] = card
  elseif top > pos then
    redis.call('HSET', mk, field, int(top))
  end
end
local out = {applied, dup, replayed, trimmed, forgotten}
for j = 1, #lens do out[#out + 1] = lens[j] end
return out
