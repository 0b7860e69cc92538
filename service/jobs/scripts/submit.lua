-- Enqueue one job atomically: Fresco's job record, the task's queued index, RQ's job hash and queue
-- entry, its place in its class's fair-share set (lib/fair.lua), its key's queued count, a wake-up
-- token for an idle worker, and the Idempotency-Key's job id. Past the task's queue cap, or the API
-- key's `max_queued`, nothing is written. Both caps hold exactly under concurrent submits. Nor is
-- anything written when the Idempotency-Key holds another request's claim or job (this one's expired).
-- KEYS: 1 job record, 2 RQ job hash, 3 the task's queued index, 4 the RQ queue list, 5 RQ's set of
--       queues, 6 queued counts, 7 running counts, 8 taken, 9 max_running limits, 10 fair jobs,
--       11 the queue's clock, 12 the class's set, 13 the class's key tags, 14 the queue's wake list,
--       [15 the idempotency key]
-- ARGV: 1 job id, 2 now, 3 cap (0: none), 4 idempotency value, 5 idempotency TTL (s), 6 owner,
--       7 max_queued (0: none), 8 max_running (0: none), 9 class, 10 tag owner (the owner, or one
--       for all under first come, first served), 11 weight,
--       12 this request's claim on the idempotency key,
--       13 n = count of record fields, then n record field/value pairs, then RQ field/value pairs
-- Returns 'ok', 'full' when the task's queue is at its cap, 'owner_full' at the key's max_queued,
-- 'claim_lost' when the idempotency key is no longer this request's.
if KEYS[15] then
  local held = redis.call('GET', KEYS[15])
  if held and held ~= ARGV[12] then return 'claim_lost' end
end
local cap = tonumber(ARGV[3])
if cap > 0 and redis.call('ZCARD', KEYS[3]) >= cap then return 'full' end
local owner, max_queued, max_running = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
if max_queued > 0 and tonumber(redis.call('HGET', KEYS[6], owner) or '0') >= max_queued then
  return 'owner_full'
end
local n = tonumber(ARGV[13])
local record, rq = {}, {}
for i = 14, 13 + n * 2 do record[#record + 1] = ARGV[i] end
for i = 14 + n * 2, #ARGV do rq[#rq + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(record))
redis.call('HSET', KEYS[2], unpack(rq))
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('RPUSH', KEYS[4], ARGV[1])
redis.call('SADD', KEYS[5], KEYS[4])
if max_running > 0 then redis.call('HSET', KEYS[9], owner, max_running) else redis.call('HDEL', KEYS[9], owner) end
local tag = fair_add(KEYS[12], KEYS[13], KEYS[11], KEYS[10], ARGV[1], owner, tonumber(ARGV[9]), ARGV[10],
                     tonumber(ARGV[11]), nil)
redis.call('HSET', KEYS[1], 'fair_tag', tag)
fair_incr(KEYS[6], owner, 1)
redis.call('RPUSH', KEYS[14], 1)
redis.call('LTRIM', KEYS[14], -16, -1)
if KEYS[15] then redis.call('SET', KEYS[15], ARGV[4], 'EX', tonumber(ARGV[5])) end
return 'ok'
