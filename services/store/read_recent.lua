#!lua flags=allow-cross-slot-keys,no-writes
-- The short-term head's read (LAYOUT.md "Vector value, layout 3"), for a chunk of users that
-- live on one node: each user's vectors under one version and the window events the newest
-- vector has not folded in. KEYS[1] = the first user's vector list: it routes the call; the
-- other keys are built here from each user's bucket and id (the allow-cross-slot-keys flag
-- lets a script touch any slot its node serves; a user whose slot is elsewhere fails the
-- call: the client learns the slot map again and reads once more).
-- ARGV[1] = version, ARGV[2] = last index of the LRANGE (history - 1), ARGV[3] = most events
-- to return, then per user: bucket, uid.
-- Returns per user {records newest first, event_id_1, record_1, event_id_2, record_2, ...}:
-- the events strictly after the newest record's marker (ts_ms, event_id) in window order, at
-- most ARGV[3] of the newest, oldest first; none when the newest record has no marker
-- (layouts 1-2). An event stored after the refresh with an older timestamp than the marker
-- sorts before it and waits for the next refresh.
local ver, last, most = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
local function recent(pre, uid)
  local recs = redis.call('LRANGE', pre .. 'v:' .. ver .. ':' .. uid, 0, last)
  local head = recs[1]
  if head == nil or most <= 0 or #head < 34 or string.byte(head, 1) ~= 3 then return {recs} end
  -- the window unchanged since the vector was encoded (meta `v` = the record's window
  -- version): nothing new, one call (the common case between a user's events)
  local wv = struct.unpack('<i8', head, 13)
  if tonumber(redis.call('HGET', pre .. 'm:' .. uid, 'v') or '0') == wv then return {recs} end
  local n = #head
  local idlen = struct.unpack('<I2', head, n - 9)
  local id = string.sub(head, n - 9 - idlen, n - 10)
  local wk = pre .. 'w:' .. uid
  local first = redis.call('ZRANK', wk, id)
  if first then
    first = first + 1
  else  -- the marker was trimmed since (the oldest go first): every event from its time on
    local ts = struct.unpack('<i8', head, n - 7)
    first = redis.call('ZCOUNT', wk, '-inf', '(' .. string.format('%.0f', ts))
  end
  local ids = redis.call('ZRANGE', wk, first, -1)
  if #ids == 0 then return {recs} end
  local lo = math.max(1, #ids - most + 1)  -- the newest `most`
  local evs = redis.call('HMGET', pre .. 'e:' .. uid, unpack(ids, lo))
  local got = {recs}
  for j = lo, #ids do
    got[#got + 1] = ids[j]
    got[#got + 1] = evs[j - lo + 1] or ''
  end
  return got
end
for i = 4, #ARGV, 2 do
  out[#out + 1] = recent('p:{' .. ARGV[i] .. '}:', ARGV[i + 1])
end
return out
