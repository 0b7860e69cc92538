-- Cancel a job. A queued one is taken off its RQ queue and its class set (RQ's job hash deleted) and
-- canceled at once (its webhook owed a completed delivery when it wants one); a running one gets the
-- flag its worker reads at its next step.
-- KEYS: 1 job record, 2 its RQ queue list, 3 its RQ job hash, 4 the task's queued index, 5 the
--       task's canceled index, 6 the job's event channel, 7 the webhook due set, 8 the delivery hash,
--       9 queued counts, 10 running counts, 11 taken, 12 fair jobs, 13 the queue's clock, 14-16 its
--       class sets, 17-19 its class key tags
-- ARGV: 1 job id, 2 queued status, 3 running status, 4 canceled status, 5 now, 6 TTL of the
--       canceled record, 7 error JSON, 8 done event JSON, 9 final progress JSON, 10 webhook event,
--       11 delivery id
-- Returns 'canceled', 'running' (flagged), 'ended' (already terminal), or false for no such job.
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return false end
if cur == ARGV[2] then
  redis.call('LREM', KEYS[2], 0, ARGV[1])
  fair_remove({KEYS[14], KEYS[15], KEYS[16]}, {KEYS[17], KEYS[18], KEYS[19]}, KEYS[13], KEYS[12], ARGV[1], false)
  fair_moved(KEYS[1], ARGV[1], KEYS[9], KEYS[10], KEYS[11], cur, ARGV[4], ARGV[2], ARGV[3])
  redis.call('DEL', KEYS[3])
  redis.call('HSET', KEYS[1], 'status', ARGV[4], 'finished_at', ARGV[5], 'error', ARGV[7],
             'progress', ARGV[9], 'cancel', '1')
  redis.call('ZREM', KEYS[4], ARGV[1])
  redis.call('ZADD', KEYS[5], ARGV[5], ARGV[1])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
  redis.call('PUBLISH', KEYS[6], ARGV[8])
  webhook_enqueue(KEYS[1], KEYS[7], KEYS[8], ARGV[11], ARGV[10], ARGV[5])
  return 'canceled'
end
if cur == ARGV[3] then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  return 'running'
end
return 'ended'
