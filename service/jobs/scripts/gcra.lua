-- An API key's rate limit, as a GCRA (generic cell rate algorithm): a request is allowed when the
-- key's theoretical arrival time (TAT) is at most the burst tolerance ahead of now; each allowed
-- request moves the TAT one emission interval on. The state expires once it no longer matters.
-- KEYS: 1 the key's GCRA state (its TAT, in ms)
-- ARGV: 1 now (ms), 2 the emission interval (ms), 3 the burst tolerance (ms)
-- Returns {1, 0} when the request is allowed, else {0, ms until the next request is allowed}.
local now, interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or ARGV[1])
if tat < now then tat = now end
if now < tat - tolerance then return {0, tat - tolerance - now} end
tat = tat + interval
redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil(tat - now + tolerance) + 1000)
return {1, 0}
