-- The webhook outbox, prepended to each script that moves a job (service/jobs/protocol.py, `Script`'s
-- `lib`): a delivery the transition owes the job's webhook is written in the same atomic step as the
-- transition, so no crash of API, worker or dispatcher between the two can lose it. The dispatcher
-- (service/webhooks/) takes deliveries from the due set. Keys come in as the caller's KEYS.

-- The job's webhook URL when its filter names `event`, else nil.
local function webhook_wanted(job, event)
  local row = redis.call('HMGET', job, 'webhook', 'webhook_events')
  if not row[1] or not row[2] then return nil end
  for _, name in ipairs(cjson.decode(row[2])) do
    if name == event then return row[1] end
  end
  return nil
end

-- When the job's webhook wants `event`: a delivery, due `now`, holding the job record as it is now
-- (the JobView its body shows) and the job's owner (its API key's name, '' when keys are off: the
-- dispatcher's per-key cap), and the job's count of deliveries owed. Returns true when enqueued.
local function webhook_enqueue(job, due, delivery, delivery_id, event, now)
  if event == '' then return false end
  local url = webhook_wanted(job, event)
  if not url then return false end
  local seq = redis.call('HINCRBY', job, 'webhook_enqueued', 1)
  local flat = redis.call('HGETALL', job)
  local snapshot = {}
  for i = 1, #flat, 2 do snapshot[flat[i]] = flat[i + 1] end
  redis.call('HSET', delivery, 'job', snapshot['id'], 'event', event, 'url', url, 'created_at', now,
             'seq', seq, 'attempts', 0, 'owner', snapshot['owner'] or '', 'snapshot', cjson.encode(snapshot))
  redis.call('ZADD', due, now, delivery_id)
  return true
end
