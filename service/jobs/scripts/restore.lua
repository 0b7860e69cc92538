-- A queued job that is in no RQ queue list (popped by a worker that died before starting it: RQ's
-- multi-queue BLPOP is not atomic with its bookkeeping) goes back on its list. A second copy of an id
-- on the list is harmless: only one worker can move a job from queued to running.
-- KEYS: 1 job record, 2 its RQ queue list, 3 its RQ job hash
-- ARGV: 1 job id, 2 the queued status
-- Returns 1 when the job was put back, else 0.
if redis.call('HGET', KEYS[1], 'status') ~= ARGV[2] then return 0 end
if redis.call('LPOS', KEYS[2], ARGV[1]) then return 0 end
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
return 1
