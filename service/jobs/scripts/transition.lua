-- Move a job from one of the allowed statuses to another, with the fields that change, in its
-- task's status indexes; publish an event; owe its webhook a delivery when it wants this event. The
-- one generic state change (service/jobs/protocol.py names each use: start, end, fail_stuck). Its
-- API key's queued and running counts follow (lib/fair.lua).
-- KEYS: 1 job record, 2..n+1 the task's index of each allowed status (ARGV order), n+2 the index of
--       the new status, n+3 the job's event channel, n+4 the webhook due set, n+5 the delivery hash,
--       n+6 queued counts, n+7 running counts, n+8 taken
-- ARGV: 1 job id, 2 n, 3..n+2 the allowed statuses, n+3 the new status, n+4 now, n+5 TTL of the
--       record once it is in the new status (0: keep), n+6 event JSON ('' for none), n+7 webhook
--       event ('' for none), n+8 delivery id, n+9 queued status, n+10 running status, then
--       field/value pairs to set
-- Returns {1, previous status}, {0, current status} when it was in none of the allowed ones, or
-- false when there is no such job.
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return false end
local n = tonumber(ARGV[2])
local from = 0
for i = 1, n do if ARGV[2 + i] == cur then from = i end end
if from == 0 then return {0, cur} end
local to, now, ttl, event = ARGV[n + 3], ARGV[n + 4], tonumber(ARGV[n + 5]), ARGV[n + 6]
redis.call('HSET', KEYS[1], 'status', to)
for i = n + 11, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
fair_moved(KEYS[1], ARGV[1], KEYS[n + 6], KEYS[n + 7], KEYS[n + 8], cur, to, ARGV[n + 9], ARGV[n + 10])
redis.call('ZREM', KEYS[1 + from], ARGV[1])
redis.call('ZADD', KEYS[n + 2], now, ARGV[1])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('ZREMRANGEBYSCORE', KEYS[n + 2], '-inf', tonumber(now) - ttl)
end
if event ~= '' then redis.call('PUBLISH', KEYS[n + 3], event) end
webhook_enqueue(KEYS[1], KEYS[n + 4], KEYS[n + 5], ARGV[n + 8], ARGV[n + 7], now)
return {1, cur}
