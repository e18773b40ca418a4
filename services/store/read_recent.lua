-- The short-term head's read: one user's vectors under one version and the window events
-- the newest vector has not folded in (LAYOUT.md "Vector value, layout 3").
-- KEYS[1] = the vector list, KEYS[2] = the window zset, KEYS[3] = the event hash (one slot).
-- ARGV[1] = last index of the LRANGE (history - 1), ARGV[2] = most events to return.
-- Returns {records newest first, event_id_1, record_1, event_id_2, record_2, ...}: the
-- events strictly after the newest record's marker (ts_ms, event_id) in window order, at
-- most ARGV[2] of the newest, oldest first. None when the newest record has no marker
-- (layouts 1-2). An event stored after the refresh with an older timestamp than the
-- marker sorts before it and waits for the next refresh.
local recs = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]))
local most = tonumber(ARGV[2])
local head = recs[1]
if head == nil or most <= 0 or #head < 34 or string.byte(head, 1) ~= 3 then return {recs} end
local n = #head
local ts = struct.unpack('<i8', head, n - 7)
local idlen = struct.unpack('<I2', head, n - 9)
local id = string.sub(head, n - 9 - idlen, n - 10)
local card = redis.call('ZCARD', KEYS[2])
local first = redis.call('ZRANK', KEYS[2], id)
if first then
  first = first + 1
else  -- the marker was trimmed since (the oldest go first): every event from its time on
  first = redis.call('ZCOUNT', KEYS[2], '-inf', '(' .. string.format('%.0f', ts))
end
if first < card - most then first = card - most end
if first >= card then return {recs} end
local ids = redis.call('ZRANGE', KEYS[2], first, -1)
local evs = redis.call('HMGET', KEYS[3], unpack(ids))
local out = {recs}
for j = 1, #ids do
  out[#out + 1] = ids[j]
  out[#out + 1] = evs[j] or ''
end
return out
