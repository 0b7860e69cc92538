-- Register the adapter a training job made, if the job may still succeed: it is running and nobody asked
-- to cancel it. The name must be free (or `replace`), and the key under its limit of adapters.
-- KEYS: 1 the key's registry hash, 2 the digest reference counts, 3 the job record
-- ARGV: 1 name, 2 record JSON, 3 replace ('1' or '0'), 4 the limit, 5 running status, 6.. the digests it names
-- Returns {1, the record it replaced or ''} or {0, why}: 'ended' | 'taken' | 'limit'.
if redis.call('HGET', KEYS[3], 'status') ~= ARGV[5] or redis.call('HGET', KEYS[3], 'cancel') then
  return {0, 'ended'}
end
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old and ARGV[3] ~= '1' then return {0, 'taken'} end
if not old and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then return {0, 'limit'} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
for i = 6, #ARGV do redis.call('HINCRBY', KEYS[2], ARGV[i], 1) end
if old then
  for _, digest in ipairs(cjson.decode(old)['digests'] or {}) do
    if redis.call('HINCRBY', KEYS[2], digest, -1) <= 0 then redis.call('HDEL', KEYS[2], digest) end
  end
end
return {1, old or ''}
