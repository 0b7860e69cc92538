-- Fair share, prepended to each script that puts a job on a queue, takes it off, or changes its status
-- (service/jobs/protocol.py, `Script`'s `lib`). Keys come in as the caller's KEYS.
--
-- Each RQ queue (a task and model) has one sorted set per priority class (`zset`), the queued job ids
-- by start tag, the order workers take them in: start-time fair queueing per API key within a class.
-- A new job's tag is max(the class's virtual time, its key's last finish tag); the key's finish tag then
-- grows by 1/weight. The virtual time is the tag of the last job a worker took. A key that queued a
-- thousand jobs has tags far ahead; another key's next job gets the virtual time, and goes next.
-- `tags`: hash key name -> [finish tag, jobs of the key in the set] (JSON); a key with none left is
-- forgotten, so an idle key banks no credit and a canceled backlog leaves no debt.
-- `clock`: hash class -> virtual time. `jobs`: hash id -> [owner, class, tag owner] while queued.
-- `counts_q` / `counts_r`: hash key name -> its queued / running jobs (a job a worker took and has not
-- started yet, held in `taken` (id -> when), counts as running).

local function fair_incr(counts, owner, by)
  local n = redis.call('HINCRBY', counts, owner, by)
  if n <= 0 then redis.call('HDEL', counts, owner) end
end

-- Put job `id` in `zset` with start tag `tag`, or (tag nil) a new tag for `tag_owner` of `weight`.
-- Returns the tag.
local function fair_add(zset, tags, clock, jobs, id, owner, class, tag_owner, weight, tag)
  local v = tonumber(redis.call('HGET', clock, class) or '0')
  local finish, n = v, 0
  local st = redis.call('HGET', tags, tag_owner)
  if st then
    local d = cjson.decode(st)
    finish, n = d[1], d[2]
  end
  if not tag then
    tag = math.max(v, finish)
    finish = tag + 1 / weight
  end
  redis.call('HSET', tags, tag_owner, cjson.encode({finish, n + 1}))
  redis.call('ZADD', zset, tag, id)
  redis.call('HSET', jobs, id, cjson.encode({owner, class, tag_owner}))
  return tag
end

-- Take job `id` out of its class set (`zsets`/`tagss`: the queue's three, by class); `advance`: a
-- worker takes it, so the class's virtual time moves up to its tag. Returns its owner (nil when it
-- was in none).
local function fair_remove(zsets, tagss, clock, jobs, id, advance)
  local e = redis.call('HGET', jobs, id)
  if not e then return nil end
  local d = cjson.decode(e)
  local owner, class, tag_owner = d[1], d[2], d[3]
  local zset, tags = zsets[class], tagss[class]
  local tag = redis.call('ZSCORE', zset, id)
  redis.call('ZREM', zset, id)
  redis.call('HDEL', jobs, id)
  local st = redis.call('HGET', tags, tag_owner)
  if st then
    local s = cjson.decode(st)
    if s[2] <= 1 then redis.call('HDEL', tags, tag_owner)
    else redis.call('HSET', tags, tag_owner, cjson.encode({s[1], s[2] - 1})) end
  end
  if advance and tag then
    local v = tonumber(redis.call('HGET', clock, class) or '0')
    if tonumber(tag) > v then redis.call('HSET', clock, class, tag) end
  end
  return owner
end

-- A job's status moved `from` -> `to` (either may be ''): its key's queued and running counts follow.
local function fair_moved(record, id, counts_q, counts_r, taken, from, to, queued, running)
  local owner = redis.call('HGET', record, 'owner') or ''
  local was_taken = redis.call('HDEL', taken, id) == 1
  if from == queued then
    fair_incr(counts_q, owner, -1)
    if was_taken and to ~= running then fair_incr(counts_r, owner, -1) end
  elseif from == running then
    fair_incr(counts_r, owner, -1)
  end
  if to == queued then
    fair_incr(counts_q, owner, 1)
  elseif to == running and not was_taken then
    fair_incr(counts_r, owner, 1)
  end
end
