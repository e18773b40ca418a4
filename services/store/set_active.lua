-- Flip the active model version in one step; see LAYOUT.md "Model version states and cutover".
-- KEYS: active (string), states (hash), history (list). ARGV[1] = version,
-- ARGV[2] = 'push' (promote: old active goes on history) or 'pop' (rollback: history head
-- must equal ARGV[1] and is removed), ARGV[3] = required state of the version ('' = any).
-- Returns the previous active version ('' when none), or an error reply on a refused flip.
local v, mode, need = ARGV[1], ARGV[2], ARGV[3]
local state = redis.call('HGET', KEYS[2], v)
if need ~= '' and state ~= need and state ~= 'active' then
  return redis.error_reply('CUTOVER version ' .. v .. ' is ' .. tostring(state) .. ', not ' .. need)
end
if state == 'retired' then
  return redis.error_reply('CUTOVER version ' .. v .. ' is retired')
end
local old = redis.call('GET', KEYS[1]) or ''
if mode == 'pop' then
  local top = redis.call('LINDEX', KEYS[3], 0)
  if top ~= v then
    return redis.error_reply('CUTOVER rollback target ' .. v .. ' is not the history head')
  end
  redis.call('LPOP', KEYS[3])
end
if old == v then return old end
if old ~= '' then
  redis.call('HSET', KEYS[2], old, 'ready')
  if mode == 'push' then
    redis.call('LPUSH', KEYS[3], old)
    redis.call('LTRIM', KEYS[3], 0, 15)
  end
end
redis.call('HSET', KEYS[2], v, 'active')
redis.call('SET', KEYS[1], v)
return old
