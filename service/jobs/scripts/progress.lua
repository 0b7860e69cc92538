-- A running job's progress: stored, published, and its cancel flag read, in one round trip.
-- KEYS: 1 job record, 2 the job's event channel
-- ARGV: 1 the running status, 2 progress JSON, 3 event JSON
-- Returns 1 when the job should stop (a cancel was asked for, or it is no longer running), else 0.
if redis.call('HGET', KEYS[1], 'status') ~= ARGV[1] then return 1 end
redis.call('HSET', KEYS[1], 'progress', ARGV[2])
redis.call('PUBLISH', KEYS[2], ARGV[3])
if redis.call('HGET', KEYS[1], 'cancel') then return 1 end
return 0
