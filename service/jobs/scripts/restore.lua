-- A queued job that is on no RQ queue list or in no class set (lib/fair.lua) goes back: one a worker
-- took and did not start within `grace` (it died between the two), or one queued before fair share.
-- A second copy of an id on the list is harmless: only one worker can move a job from queued to
-- running.
-- KEYS: 1 job record, 2 its RQ queue list, 3 its RQ job hash, 4 queued counts, 5 running counts,
--       6 taken, 7 fair jobs, 8 the queue's clock, 9 its class set, 10 its class key tags, 11 its
--       wake list
-- ARGV: 1 job id, 2 the queued status, 3 now, 4 grace (s), 5 class
-- Returns 1 when the job was put back, else 0.
if redis.call('HGET', KEYS[1], 'status') ~= ARGV[2] then return 0 end
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
local taken = redis.call('HGET', KEYS[6], ARGV[1])
if taken and tonumber(ARGV[3]) - tonumber(taken) < tonumber(ARGV[4]) then return 0 end
local listed = redis.call('LPOS', KEYS[2], ARGV[1])
local fair = redis.call('HEXISTS', KEYS[7], ARGV[1]) == 1
if listed and fair then return 0 end
if taken then
  local owner = redis.call('HGET', KEYS[1], 'owner') or ''
  redis.call('HDEL', KEYS[6], ARGV[1])
  fair_incr(KEYS[5], owner, -1)
end
if not listed then redis.call('RPUSH', KEYS[2], ARGV[1]) end
if not fair then
  local owner = redis.call('HGET', KEYS[1], 'owner') or ''
  fair_add(KEYS[9], KEYS[10], KEYS[8], KEYS[7], ARGV[1], owner, tonumber(ARGV[5]), owner, 1,
           redis.call('HGET', KEYS[1], 'fair_tag'))
end
redis.call('RPUSH', KEYS[11], 1)
redis.call('LTRIM', KEYS[11], -16, -1)
return 1
