-- Remove a registered adapter (DELETE /adapters/{name}, or a training job that could not end well after
-- registering: then only when the record is still the one it wrote).
-- KEYS: 1 the key's registry hash, 2 the digest reference counts
-- ARGV: 1 name, 2 the record it must be ('' for any)
-- Returns false when there was none, else {the record, then each digest no record names any more}.
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old or (ARGV[2] ~= '' and old ~= ARGV[2]) then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
local out = {old}
for _, digest in ipairs(cjson.decode(old)['digests'] or {}) do
  if redis.call('HINCRBY', KEYS[2], digest, -1) <= 0 then
    redis.call('HDEL', KEYS[2], digest)
    table.insert(out, digest)
  end
end
return out
