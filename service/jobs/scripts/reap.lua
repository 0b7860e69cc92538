-- The reaper's move for a running job whose worker is gone, only if the job is still running on
-- that worker (another reaper may have been first): with a retry left (and no cancel asked for) it
-- goes back to its queue, with the start tag it had (lib/fair.lua: its turn, not a new one), else it
-- fails (its webhook owed a completed delivery when it wants one).
-- KEYS: 1 job record, 2 its RQ queue list, 3 the task's running index, 4 queued index, 5 failed
--       index, 6 the job's event channel, 7 the webhook due set, 8 the delivery hash, 9 queued
--       counts, 10 running counts, 11 taken, 12 fair jobs, 13 the queue's clock, 14 its class set,
--       15 its class key tags, 16 its wake list
-- ARGV: 1 job id, 2 the worker it ran on, 3 now, 4 TTL of the failed record, 5 running status,
--       6 queued status, 7 failed status, 8 error JSON, 9 requeue event JSON, 10 done event JSON,
--       11 final progress JSON, 12 queued progress JSON, 13 webhook event, 14 delivery id, 15 class
-- Returns 'requeued', 'failed', or false when there was nothing to do.
if redis.call('HGET', KEYS[1], 'status') ~= ARGV[5] then return false end
if redis.call('HGET', KEYS[1], 'worker') ~= ARGV[2] then return false end
redis.call('ZREM', KEYS[3], ARGV[1])
local retries = tonumber(redis.call('HGET', KEYS[1], 'retries_left') or '0')
if retries > 0 and not redis.call('HGET', KEYS[1], 'cancel') then
  fair_moved(KEYS[1], ARGV[1], KEYS[9], KEYS[10], KEYS[11], ARGV[5], ARGV[6], ARGV[6], ARGV[5])
  redis.call('HSET', KEYS[1], 'status', ARGV[6], 'retries_left', tostring(retries - 1), 'progress', ARGV[12])
  redis.call('HDEL', KEYS[1], 'started_at', 'worker')
  redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
  redis.call('RPUSH', KEYS[2], ARGV[1])
  local owner = redis.call('HGET', KEYS[1], 'owner') or ''
  fair_add(KEYS[14], KEYS[15], KEYS[13], KEYS[12], ARGV[1], owner, tonumber(ARGV[15]), owner, 1,
           redis.call('HGET', KEYS[1], 'fair_tag'))
  redis.call('RPUSH', KEYS[16], 1)
  redis.call('LTRIM', KEYS[16], -16, -1)
  redis.call('PUBLISH', KEYS[6], ARGV[9])
  return 'requeued'
end
fair_moved(KEYS[1], ARGV[1], KEYS[9], KEYS[10], KEYS[11], ARGV[5], ARGV[7], ARGV[6], ARGV[5])
redis.call('HSET', KEYS[1], 'status', ARGV[7], 'error', ARGV[8], 'finished_at', ARGV[3], 'progress', ARGV[11])
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
redis.call('PUBLISH', KEYS[6], ARGV[10])
webhook_enqueue(KEYS[1], KEYS[7], KEYS[8], ARGV[14], ARGV[13], ARGV[3])
return 'failed'
