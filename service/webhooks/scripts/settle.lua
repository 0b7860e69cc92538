-- Record one delivery attempt: on the delivery (due again at the retry time, or done: delivered or
-- given up) and, when the job's record still exists (it may have expired), in what its JobView
-- reports. A delivery already settled (its lease ran out and another attempt settled it) is left alone.
-- Either way its lease ends: its API key's slot is free again (take.lua).
-- KEYS: 1 the due set, 2 the delivery hash, 3 the job record, 4 the leased hash
-- ARGV: 1 delivery id, 2 when to retry (0: done), 3 '1' when delivered, 4 the HTTP status ('' none)
-- Returns 1, or 0 when the delivery was settled already.
redis.call('HDEL', KEYS[4], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HINCRBY', KEYS[3], 'webhook_attempts', 1)
  redis.call('HSET', KEYS[3], 'webhook_last_status', ARGV[4])
  if ARGV[3] == '1' then redis.call('HINCRBY', KEYS[3], 'webhook_delivered', 1) end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('HINCRBY', KEYS[2], 'attempts', 1)
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
else
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return 1
