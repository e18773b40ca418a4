#!lua flags=allow-cross-slot-keys
-- Store the short-term delta ingest computed (LAYOUT.md "Short-term delta") for a chunk of
-- users on one node, each only if the window has not changed since it was read: a newer
-- APPLY's delta is computed by the ingest round that made it, and an older one must not
-- replace it.
-- KEYS[1] = the meta hash of the first user (routes the call). ARGV[1] = the version; then
-- per user: bucket, uid, the window version the delta covers (meta `v` when read), value.
-- Returns the number of users written.
local field = 'd' .. ARGV[1]
local written = 0
for i = 2, #ARGV, 4 do
  local mk = 'p:{' .. ARGV[i] .. '}:m:' .. ARGV[i + 1]
  if redis.call('HGET', mk, 'v') == ARGV[i + 2] then
    redis.call('HSET', mk, field, ARGV[i + 3])
    written = written + 1
  end
end
return written
