-- Dynamic batching: take the named jobs off an RQ queue list and start them on this worker,
-- atomically per job. A job another worker popped first (no longer on the list) or that is no longer
-- queued (canceled) is skipped. Each taken job goes queued -> running as `transition` moves it
-- (started_at, worker, progress, indexes, event, its webhook's start delivery), and its RQ job hash
-- is marked started by this worker; the hash stays until the job ends, so the reaper can requeue it
-- for RQ if this worker dies.
-- KEYS: 1 the RQ queue list, 2 the task's queued index, 3 its running index, 4 the webhook due set,
--       then for each job (ARGV order) its record, its RQ job hash, its event channel and a delivery hash
-- ARGV: 1 now, 2 worker name, 3 progress JSON, 4 event JSON, 5 queued status, 6 running status,
--       7 RQ's started status, 8 webhook event, then for each job its id and a delivery id
-- Returns a flat list: id, params JSON, created_at, ... of the jobs taken.
local out = {}
for i = 9, #ARGV, 2 do
  local id = ARGV[i]
  local k = 4 + (i - 9) * 2
  if redis.call('LREM', KEYS[1], 1, id) == 1 then
    local h = redis.call('HMGET', KEYS[k + 1], 'status', 'params', 'created_at')
    if h[1] == ARGV[5] then
      redis.call('HSET', KEYS[k + 1], 'status', ARGV[6], 'started_at', ARGV[1], 'worker', ARGV[2],
                 'progress', ARGV[3])
      redis.call('ZREM', KEYS[2], id)
      redis.call('ZADD', KEYS[3], ARGV[1], id)
      if redis.call('EXISTS', KEYS[k + 2]) == 1 then
        redis.call('HSET', KEYS[k + 2], 'status', ARGV[7], 'worker_name', ARGV[2])
      end
      redis.call('PUBLISH', KEYS[k + 3], ARGV[4])
      webhook_enqueue(KEYS[k + 1], KEYS[4], KEYS[k + 4], ARGV[i + 1], ARGV[8], ARGV[1])
      out[#out + 1] = id
      out[#out + 1] = h[2]
      out[#out + 1] = h[3]
    end
  end
end
return out
