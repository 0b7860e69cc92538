-- Dynamic batching: take the named jobs off an RQ queue and start them on this worker, atomically per
-- job. A job another worker took first or that is no longer queued (canceled) is skipped, and so is
-- one whose API key is at its `max_running`. Each taken job leaves its class set (lib/fair.lua) and
-- its RQ list and goes queued -> running as `transition` moves it (started_at, worker, progress,
-- indexes, event, its webhook's start delivery, its key's counts), and its RQ job hash is marked
-- started by this worker; the hash stays until the job ends, so the reaper can requeue it for RQ if
-- this worker dies.
-- KEYS: 1 the RQ queue list, 2 the task's queued index, 3 its running index, 4 the webhook due set,
--       5 queued counts, 6 running counts, 7 taken, 8 max_running limits, 9 fair jobs, 10 the
--       queue's clock, 11-13 its class sets, 14-16 its class key tags, then for each job (ARGV
--       order) its record, its RQ job hash, its event channel and a delivery hash
-- ARGV: 1 now, 2 worker name, 3 progress JSON, 4 event JSON, 5 queued status, 6 running status,
--       7 RQ's started status, 8 webhook event, then for each job its id and a delivery id
-- Returns a flat list: id, params JSON, created_at, adapter_urls JSON ('' when none), ... of the jobs taken.
local out = {}
local zsets, tagss = {KEYS[11], KEYS[12], KEYS[13]}, {KEYS[14], KEYS[15], KEYS[16]}
for i = 9, #ARGV, 2 do
  local id = ARGV[i]
  local k = 16 + (i - 9) * 2
  local e = redis.call('HGET', KEYS[9], id)
  local owner = e and cjson.decode(e)[1]
  local limit = owner and tonumber(redis.call('HGET', KEYS[8], owner) or '0')
  if owner and (limit == 0 or tonumber(redis.call('HGET', KEYS[6], owner) or '0') < limit) then
    fair_remove(zsets, tagss, KEYS[10], KEYS[9], id, true)
    redis.call('LREM', KEYS[1], 1, id)
    local h = redis.call('HMGET', KEYS[k + 1], 'status', 'params', 'created_at', 'adapter_urls')
    if h[1] == ARGV[5] then
      redis.call('HSET', KEYS[k + 1], 'status', ARGV[6], 'started_at', ARGV[1], 'worker', ARGV[2],
                 'progress', ARGV[3])
      fair_moved(KEYS[k + 1], id, KEYS[5], KEYS[6], KEYS[7], ARGV[5], ARGV[6], ARGV[5], ARGV[6])
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
      out[#out + 1] = h[4] or ''
    end
  end
end
return out
