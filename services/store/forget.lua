-- Forget one user (see LAYOUT.md "Forgetting a user"), in one atomic step.
-- KEYS[1] = the bucket's dirty set; KEYS[2..4] = the user's window, events and meta keys;
-- KEYS[5] = the bucket's rescore set; KEYS[6..] = the user's vector list under every model
-- version the store knows.
-- (The short-term state lives in the meta hash: it goes with it.)
-- ARGV[1] = uid; ARGV[2] = forget time ms (events with ts_ms <= it are refused from now on);
-- ARGV[3] = '' to forget unconditionally, or a cutoff ms (expiry): forget only when the
-- window's newest event (meta `t`) is older than the cutoff, and then at that newest time.
-- Returns {forgotten (1, or 0: expiry found the user active or without a window),
--          window deleted (0/1), vector lists deleted, dirty mark removed (0/1)}.
local function int(x) return string.format('%d', x) end
local uid, at, cutoff = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local m = redis.call('HMGET', KEYS[4], 'v', 'x', 't')
if cutoff ~= '' then
  local newest = tonumber(m[3] or '')
  if newest == nil or newest >= tonumber(cutoff) then return {0, 0, 0, 0} end
  at = newest
end
local ver = tonumber(m[1] or '0') + 1
local prev = tonumber(m[2] or '-1')
if prev > at then at = prev end
local had = redis.call('EXISTS', KEYS[2])
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
local dirty = redis.call('ZREM', KEYS[1], uid)
redis.call('ZREM', KEYS[5], uid)
local nvec = 0
for i = 6, #KEYS do
  -- out of the version's audience sets too (write_vectors.lua): their count is in the
  -- newest value (layouts 2-3)
  local head = redis.call('LINDEX', KEYS[i], 0)
  local off, ns = nil, 0
  if head then off, ns = score_block(head) end
  if off ~= nil then
    local prefix = audience_prefix(KEYS[i], uid)
    for j = 0, ns - 1 do redis.call('ZREM', prefix .. j, uid) end
  end
  nvec = nvec + redis.call('DEL', KEYS[i])
end
-- the meta keeps only the marker: the window version goes on (a vector encoded from the
-- window before is refused by write_vectors.lua), `x` refuses old events, `xv` old vectors;
-- `xp`: the update log's tombstones are owed until the caller has them acknowledged
redis.call('HSET', KEYS[4], 'v', int(ver), 'x', int(at), 'xv', int(ver), 'xp', '1')
return {1, had, nvec, dirty}
