-- A job record for a client, with its place in its queue, in one round trip.
-- KEYS: 1 job record, then the queued index of each task named in ARGV (same order)
-- ARGV: 1 job id, 2 the queued status, 3 .. 5 the priority classes (highest first), then the task names
-- Returns the record as a flat list plus '_queue_position' (jobs ahead; -1 when not queued), or
-- false when there is no such job. A queued job's place is the jobs its workers take before it: those
-- of a higher class in its queue, then those ahead of it in its class's set (lib/fair.lua; `fair_keys`,
-- written at submit, names the sets). A job a worker has taken off its queue is next (0). A job
-- queued before fair share counts its task's jobs queued before it.
local h = redis.call('HGETALL', KEYS[1])
if #h == 0 then return false end
local status, task, priority, sets
for i = 1, #h, 2 do
  local f = h[i]
  if f == 'status' then status = h[i + 1] elseif f == 'task' then task = h[i + 1]
  elseif f == 'priority' then priority = h[i + 1] elseif f == 'fair_keys' then sets = cjson.decode(h[i + 1]) end
end
local pos = -1
if status == ARGV[2] and sets then
  local before = 0
  for c = 1, 3 do
    if ARGV[2 + c] == priority then
      local r = redis.call('ZRANK', sets[c], ARGV[1])
      pos = r and before + r or 0
    else
      before = before + redis.call('ZCARD', sets[c])
    end
    if pos >= 0 then break end
  end
elseif status == ARGV[2] then
  for i = 6, #ARGV do
    if ARGV[i] == task then
      local r = redis.call('ZRANK', KEYS[i - 4], ARGV[1])
      if r then pos = r end
    end
  end
end
h[#h + 1] = '_queue_position'
h[#h + 1] = tostring(pos)
return h
