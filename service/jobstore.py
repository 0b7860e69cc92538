"""Job state in Redis: the keys, and the atomic transitions that the API and the workers share.

RQ is the transport (queue lists, the worker loop); Fresco's own job hash is the source of truth for
what a client sees, so a view is one round trip and every state change is one atomic script:

    fresco:job:<id>               hash: task, model, status, created_at, started_at, finished_at,
                                  params, warnings, progress, result, error, timings (JSON), cancel
    fresco:jobs:<task>:<status>   sorted set of job ids by the time they entered that status
    fresco:events:<id>            pub/sub channel: progress and done events
    fresco:workers                sorted set of worker names by last heartbeat
    fresco:worker:<name>          the worker's heartbeat (JSON, short TTL)
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

STATUSES = ("queued", "running", "succeeded", "failed", "canceled")
TERMINAL = ("succeeded", "failed", "canceled")
RQ_FUNC = "workers.jobs.run_job"  # the one RQ entry point, enqueued by dotted path


def job_key(job_id: str) -> str:
    return f"fresco:job:{job_id}"


def state_key(task: str, status: str) -> str:
    return f"fresco:jobs:{task}:{status}"


EVENTS_PATTERN = "fresco:events:*"
WORKERS_KEY = "fresco:workers"


def worker_key(name: str) -> str:
    return f"fresco:worker:{name}"


def queue_name(task: str, model: str) -> str:
    """One RQ queue per task and model: a worker only ever takes jobs for models it has loaded."""
    return f"fresco-{task}-{model}"


def rq_queue_key(task: str, model: str) -> str:
    return f"rq:queue:{queue_name(task, model)}"


def serves(task: str, model: str) -> str:
    """How a worker's heartbeat names one (task, model) pair it serves."""
    return f"{task}/{model}"


def rq_job_key(job_id: str) -> str:
    return f"rq:job:{job_id}"


def iso(ts: float | str | None) -> str | None:
    if ts in (None, ""):
        return None
    dt = datetime.fromtimestamp(float(ts), tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


# KEYS[1] job hash. ARGV: id, allowed from-states (comma list), to-state, now, ttl (0: keep),
# event JSON ('' for none), then field/value pairs. Returns {1, previous} or {0, current}; nil if gone.
TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return false end
local allowed = false
for s in string.gmatch(ARGV[2], '[^,]+') do if s == cur then allowed = true end end
if not allowed then return {0, cur} end
local task = redis.call('HGET', KEYS[1], 'task')
redis.call('HSET', KEYS[1], 'status', ARGV[3])
for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZREM', 'fresco:jobs:' .. task .. ':' .. cur, ARGV[1])
local dest = 'fresco:jobs:' .. task .. ':' .. ARGV[3]
redis.call('ZADD', dest, ARGV[4], ARGV[1])
local ttl = tonumber(ARGV[5])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('ZREMRANGEBYSCORE', dest, '-inf', tonumber(ARGV[4]) - ttl)
end
if ARGV[6] ~= '' then redis.call('PUBLISH', 'fresco:events:' .. ARGV[1], ARGV[6]) end
return {1, cur}
"""

# One atomic submit. KEYS[1] job hash, KEYS[2] RQ job hash, KEYS[3] the task's queued index,
# KEYS[4] the RQ queue list, KEYS[5] the idempotency key (or a dummy when there is none).
# ARGV: id, now, cap (0: none), idempotency value ('' for none), idempotency TTL, count of job
# fields, then job field/value pairs, then RQ field/value pairs.
# The cap counts the task's queued jobs (all models) and holds exactly under concurrent submits.
SUBMIT = """
local cap = tonumber(ARGV[3])
if cap > 0 and redis.call('ZCARD', KEYS[3]) >= cap then return 'full' end
local n = tonumber(ARGV[6])
local job, rq = {}, {}
for i = 7, 6 + n * 2 do job[#job + 1] = ARGV[i] end
for i = 7 + n * 2, #ARGV do rq[#rq + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(job))
redis.call('HSET', KEYS[2], unpack(rq))
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('RPUSH', KEYS[4], ARGV[1])
redis.call('SADD', 'rq:queues', KEYS[4])
if ARGV[4] ~= '' then redis.call('SET', KEYS[5], ARGV[4], 'EX', tonumber(ARGV[5])) end
return 'ok'
"""

# KEYS[1] job hash. ARGV: id, progress JSON, event JSON. Returns 1 when a cancel was asked for.
PROGRESS = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 1 end
redis.call('HSET', KEYS[1], 'progress', ARGV[2])
redis.call('PUBLISH', 'fresco:events:' .. ARGV[1], ARGV[3])
if redis.call('HGET', KEYS[1], 'cancel') then return 1 end
return 0
"""

# KEYS[1] job hash. ARGV: id, now, ttl, error JSON, event JSON, progress JSON.
# A queued job is taken off the queue and canceled at once; a running one gets the flag its worker
# reads at the next step. Returns 'canceled', 'running', or 'ended' (already terminal); nil if unknown.
CANCEL = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return false end
if cur == 'queued' then
  local task = redis.call('HGET', KEYS[1], 'task')
  local model = redis.call('HGET', KEYS[1], 'model')
  redis.call('LREM', 'rq:queue:fresco-' .. task .. '-' .. model, 0, ARGV[1])
  redis.call('DEL', 'rq:job:' .. ARGV[1])
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'finished_at', ARGV[2], 'error', ARGV[4],
             'progress', ARGV[6], 'cancel', '1')
  redis.call('ZREM', 'fresco:jobs:' .. task .. ':queued', ARGV[1])
  redis.call('ZADD', 'fresco:jobs:' .. task .. ':canceled', ARGV[2], ARGV[1])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
  redis.call('PUBLISH', 'fresco:events:' .. ARGV[1], ARGV[5])
  return 'canceled'
end
if cur == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  return 'running'
end
return 'ended'
"""

# The reaper's move for a running job whose worker is gone. KEYS[1] job hash, KEYS[2] the job's RQ
# queue list. ARGV: id, the worker it ran on, now, ttl, error JSON, requeue event JSON, done event JSON,
# progress JSON. Only if the job is still running on that worker (another reaper may have been first):
# with a retry left it goes back to the queue, else it fails. Returns 'requeued', 'failed' or false.
REAP = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return false end
if redis.call('HGET', KEYS[1], 'worker') ~= ARGV[2] then return false end
local task = redis.call('HGET', KEYS[1], 'task')
redis.call('ZREM', 'fresco:jobs:' .. task .. ':running', ARGV[1])
local retries = tonumber(redis.call('HGET', KEYS[1], 'retries_left') or '0')
if retries > 0 and not redis.call('HGET', KEYS[1], 'cancel') then
  redis.call('HSET', KEYS[1], 'status', 'queued', 'retries_left', tostring(retries - 1),
             'progress', '{"stage":"queued","step":0,"total_steps":0,"fraction":0.0}')
  redis.call('HDEL', KEYS[1], 'started_at', 'worker')
  redis.call('ZADD', 'fresco:jobs:' .. task .. ':queued', ARGV[3], ARGV[1])
  redis.call('RPUSH', KEYS[2], ARGV[1])
  redis.call('PUBLISH', 'fresco:events:' .. ARGV[1], ARGV[6])
  return 'requeued'
end
redis.call('HSET', KEYS[1], 'status', 'failed', 'error', ARGV[5], 'finished_at', ARGV[3], 'progress', ARGV[8])
redis.call('ZADD', 'fresco:jobs:' .. task .. ':failed', ARGV[3], ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
redis.call('PUBLISH', 'fresco:events:' .. ARGV[1], ARGV[7])
return 'failed'
"""

# A queued job that is in no RQ queue list (popped by a worker that died before starting it: RQ's
# multi-queue BLPOP is not atomic with its bookkeeping) goes back on its list. A second copy of an id
# on the list is harmless: only one worker can move a job from queued to running.
# KEYS[1] job hash, KEYS[2] RQ queue list, KEYS[3] RQ job hash. ARGV: id. Returns 1 when requeued.
RESTORE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
if redis.call('LPOS', KEYS[2], ARGV[1]) then return 0 end
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
return 1
"""

# KEYS[1] job hash. ARGV: id. The hash as a flat list plus '_queue_position' (jobs ahead; -1 if none).
VIEW = """
local h = redis.call('HGETALL', KEYS[1])
if #h == 0 then return false end
local status, task
for i = 1, #h, 2 do
  if h[i] == 'status' then status = h[i + 1] elseif h[i] == 'task' then task = h[i + 1] end
end
local pos = -1
if status == 'queued' then
  local r = redis.call('ZRANK', 'fresco:jobs:' .. task .. ':queued', ARGV[1])
  if r then pos = r end
end
h[#h + 1] = '_queue_position'
h[#h + 1] = tostring(pos)
return h
"""


def initial_progress() -> dict:
    return {"stage": "queued", "step": 0, "total_steps": 0, "fraction": 0.0}


def new_job_fields(job_id: str, task: str, model: str, params: dict, now: float, *, owner: str = "",
                   retries: int = 0) -> dict[str, str]:
    return {
        "id": job_id,
        "task": task,
        "model": model,
        "status": "queued",
        "created_at": repr(now),
        "params": dumps(params),
        "warnings": "[]",
        "progress": dumps(initial_progress()),
        "owner": owner,
        "retries_left": str(retries),
    }


def decode_hash(raw) -> dict[str, str]:
    """A flat [k, v, k, v] list or a dict of bytes -> a dict of str."""
    if isinstance(raw, dict):
        items = raw.items()
    else:
        items = zip(raw[::2], raw[1::2])
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in items}


def _json(h: dict, key: str, default=None):
    value = h.get(key)
    return json.loads(value) if value else default


def _no_signature(job_id: str, name: str) -> str:
    return ""


def to_view(h: dict[str, str], base_url: str, sign=_no_signature) -> dict[str, Any]:
    """The stored hash -> the contract's JobView, with absolute (and, with API keys, signed) URLs."""
    job_id = h["id"]

    def url(name: str) -> str:
        return f"{base_url}/results/{job_id}/{name}{sign(job_id, name)}"

    result = _json(h, "result")
    if result:
        for item in result.get("images") or []:
            item["url"] = url(item.pop("name"))
        if result.get("video"):
            result["video"]["url"] = url(result["video"].pop("name"))
    params = _json(h, "params", {})
    image = params.get("image")
    if isinstance(image, dict) and "name" in image:
        params["image"] = {"url": url(image["name"]), "width": image.get("width"), "height": image.get("height")}
    position = int(h.get("_queue_position", -1))
    return {
        "id": job_id,
        "task": h["task"],
        "model": h["model"],
        "status": h["status"],
        "created_at": iso(h.get("created_at")),
        "started_at": iso(h.get("started_at")),
        "finished_at": iso(h.get("finished_at")),
        "queue_position": position if position >= 0 else None,
        "progress": _json(h, "progress", initial_progress()),
        "params": params,
        "warnings": _json(h, "warnings", []),
        "result": result,
        "error": _json(h, "error"),
        "timings": _json(h, "timings", {}),
    }


def now() -> float:
    return time.time()


# ---- dynamic batching (workers/jobs.py): a worker that RQ gave one job takes compatible queued ones too ----

# The jobs waiting on an RQ queue list, with their parameters, for the worker to choose compatible ones.
# KEYS[1] the RQ queue list. ARGV: how many entries from the head to look at.
# Returns a flat list: id, params JSON, id, params JSON, ... (queued jobs only).
BATCH_PEEK = """
local ids = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
local out = {}
for _, id in ipairs(ids) do
  local h = redis.call('HMGET', 'fresco:job:' .. id, 'status', 'params')
  if h[1] == 'queued' and h[2] then
    out[#out + 1] = id
    out[#out + 1] = h[2]
  end
end
return out
"""

# Take the named jobs off an RQ queue list and start them on this worker, atomically per job: a job
# another worker popped first (no longer on the list) or that is no longer queued (canceled) is
# skipped. Each taken job goes queued -> running as TRANSITION moves it (started_at, worker,
# progress, indexes, event), and its RQ job hash is marked started by this worker; the hash stays
# until the job ends, so the reaper can requeue the job for RQ if this worker dies.
# KEYS[1] the RQ queue list. ARGV: now, worker name, progress JSON, event JSON, then the job ids.
# Returns a flat list: id, params JSON, created_at, ... for the jobs taken.
BATCH_CLAIM = """
local out = {}
for i = 5, #ARGV do
  local id = ARGV[i]
  if redis.call('LREM', KEYS[1], 1, id) == 1 then
    local key = 'fresco:job:' .. id
    local h = redis.call('HMGET', key, 'status', 'task', 'params', 'created_at')
    if h[1] == 'queued' then
      redis.call('HSET', key, 'status', 'running', 'started_at', ARGV[1], 'worker', ARGV[2], 'progress', ARGV[3])
      redis.call('ZREM', 'fresco:jobs:' .. h[2] .. ':queued', id)
      redis.call('ZADD', 'fresco:jobs:' .. h[2] .. ':running', ARGV[1], id)
      if redis.call('EXISTS', 'rq:job:' .. id) == 1 then
        redis.call('HSET', 'rq:job:' .. id, 'status', 'started', 'worker_name', ARGV[2])
      end
      redis.call('PUBLISH', 'fresco:events:' .. id, ARGV[4])
      out[#out + 1] = id
      out[#out + 1] = h[3]
      out[#out + 1] = h[4]
    end
  end
end
return out
"""
