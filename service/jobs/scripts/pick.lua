-- A worker's next job under fair share and priorities (lib/fair.lua), taken off its queue: the
-- highest class first, across the worker's queues in its order; within a class, the lowest start tag
-- whose API key is under its `max_running`. The job leaves its class set and its RQ list and is
-- counted as running for its key (held in `taken` until the worker starts it: protocol.start).
-- KEYS: 1 queued counts, 2 running counts, 3 taken, 4 max_running limits, 5 fair jobs, then for each
--       queue: its RQ list, its clock, its three class sets, its three class key tags
-- ARGV: 1 now, 2 how many entries of a class set to look at
-- Returns {queue number (1-based), job id}, or false when none can be taken.
local scan = tonumber(ARGV[2])
local queues = (#KEYS - 5) / 8
for class = 1, 3 do
  for q = 1, queues do
    local b = 5 + (q - 1) * 8
    local zsets = {KEYS[b + 3], KEYS[b + 4], KEYS[b + 5]}
    local tagss = {KEYS[b + 6], KEYS[b + 7], KEYS[b + 8]}
    for _, id in ipairs(redis.call('ZRANGE', zsets[class], 0, scan - 1)) do
      local e = redis.call('HGET', KEYS[5], id)
      if not e then
        redis.call('ZREM', zsets[class], id)  -- not queued any more
      else
        local owner = cjson.decode(e)[1]
        local limit = tonumber(redis.call('HGET', KEYS[4], owner) or '0')
        if limit == 0 or tonumber(redis.call('HGET', KEYS[2], owner) or '0') < limit then
          fair_remove(zsets, tagss, KEYS[b + 2], KEYS[5], id, true)
          redis.call('LREM', KEYS[b + 1], 1, id)
          redis.call('HSET', KEYS[3], id, ARGV[1])
          fair_incr(KEYS[2], owner, 1)
          return {q, id}
        end
      end
    end
  end
end
return false
