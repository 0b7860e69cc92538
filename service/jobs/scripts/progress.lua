-- A running job's progress: stored, published, and its cancel flag read, in one round trip; its
-- webhook owed a progress delivery when it wants one and none was owed in the last interval; its live
-- preview, when the report carries one, kept apart (not in the record, so no webhook snapshot holds it).
-- KEYS: 1 job record, 2 the job's event channel, 3 the webhook due set, 4 the delivery hash,
--       5 the job's latest preview, 6 the job's "watched" flag
-- ARGV: 1 the running status, 2 progress JSON, 3 event JSON, 4 webhook event, 5 delivery id, 6 now,
--       7 the least seconds between two progress deliveries of a job, 8 the preview ('' none),
--       9 the preview's TTL in seconds
-- Returns 1 when the job should stop (a cancel was asked for, or it is no longer running), else 2 when
-- someone watches its previews, else 0.
if redis.call('HGET', KEYS[1], 'status') ~= ARGV[1] then return 1 end
redis.call('HSET', KEYS[1], 'progress', ARGV[2])
if ARGV[8] ~= '' then redis.call('SET', KEYS[5], ARGV[8], 'EX', ARGV[9]) end
redis.call('PUBLISH', KEYS[2], ARGV[3])
local last = redis.call('HGET', KEYS[1], 'webhook_progress_at')
if not last or tonumber(ARGV[6]) - tonumber(last) >= tonumber(ARGV[7]) then
  if webhook_enqueue(KEYS[1], KEYS[3], KEYS[4], ARGV[5], ARGV[4], ARGV[6]) then
    redis.call('HSET', KEYS[1], 'webhook_progress_at', ARGV[6])
  end
end
if redis.call('HGET', KEYS[1], 'cancel') then return 1 end
if redis.call('EXISTS', KEYS[6]) == 1 then return 2 end
return 0
