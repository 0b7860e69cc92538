-- Keep a delivery's body, rendered on its first attempt, so every attempt sends the same bytes; the
-- job snapshot it was rendered from goes. A body kept already (by an earlier attempt, or another
-- dispatcher's) wins over this one.
-- KEYS: 1 the delivery hash
-- ARGV: 1 the rendered body
-- Returns the body to send, or false when the delivery is gone (settled meanwhile).
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local kept = redis.call('HGET', KEYS[1], 'body')
if kept then return kept end
redis.call('HSET', KEYS[1], 'body', ARGV[1])
redis.call('HDEL', KEYS[1], 'snapshot')
return ARGV[1]
