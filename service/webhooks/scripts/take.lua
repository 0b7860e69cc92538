-- Take due deliveries, each leased to the caller: it moves to the lease's end in the due set, so a
-- delivery whose dispatcher dies mid-attempt is due again then, for any dispatcher (at least once,
-- never lost). The attempt's outcome moves it again (settle.lua).
-- Fair across API keys, over every dispatcher sharing this Redis: a key holds at most `cap` leases
-- that have not run out. The leased hash names each taken delivery's key until it is settled; a lease
-- counts while its delivery's due time (the lease's end) is ahead, so a lease that runs out (its
-- dispatcher died) gives its slot back, and the delivery takes one again when it is taken again.
-- The caller picks the candidates (it reads their keys, and the fair order: service/webhooks/outbox.py);
-- this script takes those still due whose key has a slot free, in that order, atomically.
-- KEYS: 1 the due set, 2 the leased hash (delivery id -> its API key's name)
-- ARGV: 1 now, 2 the lease's end, 3 the most to take, 4 the leases one key may hold (0: no cap; the
--       key '' (API keys off) has none), 5.. the candidates: a delivery id, then its key's name, ...
-- Returns the delivery ids taken.
local now, room, cap = tonumber(ARGV[1]), tonumber(ARGV[3]), tonumber(ARGV[4])
local held = {}
local leased = redis.call('HGETALL', KEYS[2])
for i = 1, #leased, 2 do
  local due = redis.call('ZSCORE', KEYS[1], leased[i])
  if not due then
    redis.call('HDEL', KEYS[2], leased[i])  -- settled or dropped: settle.lua forgets it too
  elseif tonumber(due) > now then
    held[leased[i + 1]] = (held[leased[i + 1]] or 0) + 1
  end
end
local taken = {}
for i = 5, #ARGV - 1, 2 do
  if #taken >= room then break end
  local id, owner = ARGV[i], ARGV[i + 1]
  local due = redis.call('ZSCORE', KEYS[1], id)
  local count = held[owner] or 0
  if due and tonumber(due) <= now and (cap == 0 or owner == '' or count < cap) then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    redis.call('HSET', KEYS[2], id, owner)
    held[owner] = count + 1
    taken[#taken + 1] = id
  end
end
return taken
