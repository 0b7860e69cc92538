-- Take the deliveries that are due, each leased to the caller: it moves to the lease's end in the due
-- set, so a delivery whose dispatcher dies mid-attempt is due again then, for any dispatcher (at least
-- once, never lost). The attempt's outcome moves it again (settle.lua).
-- KEYS: 1 the due set
-- ARGV: 1 now, 2 the lease's end, 3 the most to take
-- Returns the delivery ids taken, earliest due first.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
