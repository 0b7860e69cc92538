-- Enqueue one job atomically: Fresco's job record, the task's queued index, RQ's job hash and queue
-- entry, and the Idempotency-Key's job id. Past the task's queue cap nothing is written. The cap
-- counts the task's queued jobs (all models) and holds exactly under concurrent submits.
-- KEYS: 1 job record, 2 RQ job hash, 3 the task's queued index, 4 the RQ queue list, 5 RQ's set of
--       queues, [6 the idempotency key]
-- ARGV: 1 job id, 2 now, 3 cap (0: none), 4 idempotency value, 5 idempotency TTL (s),
--       6 n = count of record fields, then n record field/value pairs, then RQ field/value pairs
-- Returns 'ok', or 'full' when the queue is at its cap.
local cap = tonumber(ARGV[3])
if cap > 0 and redis.call('ZCARD', KEYS[3]) >= cap then return 'full' end
local n = tonumber(ARGV[6])
local record, rq = {}, {}
for i = 7, 6 + n * 2 do record[#record + 1] = ARGV[i] end
for i = 7 + n * 2, #ARGV do rq[#rq + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(record))
redis.call('HSET', KEYS[2], unpack(rq))
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('RPUSH', KEYS[4], ARGV[1])
redis.call('SADD', KEYS[5], KEYS[4])
if KEYS[6] then redis.call('SET', KEYS[6], ARGV[4], 'EX', tonumber(ARGV[5])) end
return 'ok'
