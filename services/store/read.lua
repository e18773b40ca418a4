-- Read one user's window. KEYS: window zset, event hash, meta hash. ARGV[1] (optional) =
-- n > 0: only the newest n events (what an encoder reading n events needs).
-- Returns {version, event_id_1, record_1, event_id_2, record_2, ...} oldest first.
local n = tonumber(ARGV[1] or '0') or 0
local ids
if n > 0 then
  ids = redis.call('ZRANGE', KEYS[1], -n, -1)
else
  ids = redis.call('ZRANGE', KEYS[1], 0, -1)
end
local out = {redis.call('HGET', KEYS[3], 'v') or '0'}
if #ids == 0 then return out end
local recs = redis.call('HMGET', KEYS[2], unpack(ids))
for j = 1, #ids do
  out[#out + 1] = ids[j]
  out[#out + 1] = recs[j] or ''
end
return out
