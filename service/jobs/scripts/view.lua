-- A job record for a client, with its place in its task's queue, in one round trip.
-- KEYS: 1 job record, then the queued index of each task named in ARGV (same order)
-- ARGV: 1 job id, 2 the queued status, then the task names
-- Returns the record as a flat list plus '_queue_position' (jobs ahead; -1 when not queued), or
-- false when there is no such job.
local h = redis.call('HGETALL', KEYS[1])
if #h == 0 then return false end
local status, task
for i = 1, #h, 2 do
  if h[i] == 'status' then status = h[i + 1] elseif h[i] == 'task' then task = h[i + 1] end
end
local pos = -1
if status == ARGV[2] then
  for i = 3, #ARGV do
    if ARGV[i] == task then
      local r = redis.call('ZRANK', KEYS[i - 1], ARGV[1])
      if r then pos = r end
    end
  end
end
h[#h + 1] = '_queue_position'
h[#h + 1] = tostring(pos)
return h
