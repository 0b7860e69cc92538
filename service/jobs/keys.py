"""Every Redis key Fresco uses, and the keys of RQ's that Fresco writes or reads, spelled here only.

    fresco:job:<id>               hash: the job record (fields in JOB_FIELDS)
    fresco:jobs:<task>:<status>   sorted set: the task's job ids by when they entered that status
    fresco:events:<id>            pub/sub channel: the job's progress and done events
    fresco:preview:<id>           string: the running job's latest live preview (a data URL), short TTL
    fresco:watched:<id>           string: someone watches the job's previews (set and renewed by the
                                  watcher, short TTL); the worker makes previews only while it exists
    fresco:workers                sorted set: worker names by last heartbeat
    fresco:worker:<name>          string: the worker's heartbeat (JSON, short TTL)
    fresco:idem:<sha256>          string: an Idempotency-Key's claim, `<body digest>:<job id>`
    fresco:rate:<key name>        string: an API key's rate-limit state (GCRA)
    fresco:webhooks:due           sorted set: webhook delivery ids by when each is due (or its lease ends)
    fresco:url-signing-secret     string: the result URLs' signing secret, when FRESCO_URL_SIGNING_SECRET is unset
    fresco:webhooks:leased        hash: webhook delivery id -> its API key's name, while taken (per-key cap)
    fresco:webhook:<delivery id>  hash: one webhook delivery (fields in DELIVERY_FIELDS)
    fresco:a1111:options[:<key name>]  hash: AUTOMATIC1111 options an API key set (POST /sdapi/v1/options); no
                                  key name: the one shared slot when API keys are off
    fresco:a1111:runs[:<key name>]  sorted set: the key's AUTOMATIC1111 calls in flight, by when each expires
    fresco:a1111:run:<run id>     hash: one AUTOMATIC1111 call (fields in A1111_RUN_FIELDS, `job:<i>` its jobs)
    fresco:adapters[:<key name>]  hash: the adapters an API key trained, name -> record (JSON); no key name:
                                  the one shared registry when API keys are off (service/adapter_registry.py)
    fresco:adapter-refs           hash: adapter file digest -> how many registry records name it
    fresco:fair:<queue>:<class>   sorted set: the queued job ids of one RQ queue and priority class (high,
                                  normal, low), by start tag: the order workers take them in (fair share,
                                  service/jobs/scripts/lib/fair.lua)
    fresco:fair:<queue>:<class>:tags  hash: API key name -> [its last finish tag, its jobs in that set] (JSON)
    fresco:fair:<queue>:clock     hash: class -> the queue's virtual time in that class
    fresco:fair:wake:<queue>      list: tokens that wake an idle worker of the queue (short; trimmed)
    fresco:fair:jobs              hash: queued job id -> [owner, class, tag owner] (JSON), while in a class set
    fresco:fair:queued            hash: API key name -> its queued jobs
    fresco:fair:running           hash: API key name -> its running jobs (with those taken, not yet started)
    fresco:fair:taken             hash: job id -> when a worker took it off its queue (until it starts it)
    fresco:fair:limits            hash: API key name -> its `max_running` (only keys that have one)
    rq:queue:fresco-<task>-<model>  list: RQ's queue of one task and model (job ids)
    rq:queues                     set: RQ's registry of queue keys
    rq:job:<id>                   hash: RQ's job (JSON-serialized call of RQ_ENTRY_POINT)

Lua scripts never spell a key: the functions in `service/jobs/protocol.py` pass every key they touch
as KEYS, built here.
"""

from __future__ import annotations

from rq.job import Job
from rq.queue import Queue

PREFIX = "fresco:"
# The one function RQ runs, enqueued by dotted path, so the API never imports the worker code
# (tests/workers/test_jobs.py pins it to `workers.jobs.run_job`).
RQ_ENTRY_POINT = "workers.jobs.run_job"

# The fields of a job record (`job(id)`), what writes them, and what the Lua scripts may name.
JOB_FIELDS = frozenset({
    "id", "task", "model", "owner", "created_at", "params", "retries_left",  # set at submit
    "status", "progress", "warnings",  # changed by every transition
    "started_at", "worker",  # set when a worker starts the job
    "finished_at", "result", "error", "timings",  # set when it ends
    "cancel",  # set by a cancel request; read by the worker at each step
    "priority", "fair_tag", "fair_keys",  # set at submit: its class, its start tag, its queue's class sets
    "webhook", "webhook_events",  # set at submit when the request names a webhook: its URL, the events (JSON)
    "adapter_urls",  # set at submit when a LoRA URL has a query: the full URLs `params` shows without (JSON)
    "webhook_enqueued", "webhook_progress_at",  # by the transitions that owe it a delivery (the outbox)
    "webhook_delivered", "webhook_attempts", "webhook_last_status",  # by the dispatcher, after each attempt
})

# The fields of a webhook delivery (`webhook_delivery(id)`), written by the transition that owes it
# (service/jobs/scripts/lib/webhook_outbox.lua) and by the dispatcher (service/webhooks/outbox.py).
DELIVERY_FIELDS = frozenset({
    "job", "event", "url", "created_at", "seq",  # the job's id, the event, where to, when, its number for the job
    "owner",  # the job's API key's name ('' when keys are off): the dispatcher's per-key cap
    "snapshot",  # the job record as the event left it (JSON), until the body is rendered from it
    "body", "attempts",  # the rendered body, sent as is by every attempt; attempts so far
})


def job(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def status_index(task: str, status: str) -> str:
    return f"{PREFIX}jobs:{task}:{status}"


def events(job_id: str) -> str:
    return f"{PREFIX}events:{job_id}"


EVENTS_PATTERN = events("*")


def preview(job_id: str) -> str:
    return f"{PREFIX}preview:{job_id}"


def watched(job_id: str) -> str:
    return f"{PREFIX}watched:{job_id}"
WORKERS = f"{PREFIX}workers"


def worker(name: str) -> str:
    return f"{PREFIX}worker:{name}"


def idempotency(digest: str) -> str:
    """`digest`: the SHA-256 hex of the API key's name and the Idempotency-Key (service/api/idempotency.py)."""
    return f"{PREFIX}idem:{digest}"


def rate(owner: str) -> str:
    return f"{PREFIX}rate:{owner}"


WEBHOOKS_DUE = f"{PREFIX}webhooks:due"
WEBHOOKS_LEASED = f"{PREFIX}webhooks:leased"
URL_SIGNING_SECRET = f"{PREFIX}url-signing-secret"


def webhook_delivery(delivery_id: str) -> str:
    return f"{PREFIX}webhook:{delivery_id}"


# One AUTOMATIC1111 call (service/api/compat/a1111/state.py): the native jobs it planned, when it began
# (its `job_timestamp`), whether `/interrupt` stopped it; `job:<i>` is its i-th job's id.
A1111_RUN_FIELDS = frozenset({"count", "started", "timestamp", "interrupted"})


def _a1111(what: str, owner: str | None) -> str:
    return f"{PREFIX}a1111:{what}" + ("" if owner is None else f":{owner}")


def a1111_options(owner: str | None) -> str:
    """`owner`: the API key's name; None (keys off): the one shared slot."""
    return _a1111("options", owner)


def a1111_runs(owner: str | None) -> str:
    return _a1111("runs", owner)


def a1111_run(run_id: str) -> str:
    return f"{PREFIX}a1111:run:{run_id}"


def adapters(owner: str | None) -> str:
    """`owner`: the API key's name; None (keys off): the one shared registry."""
    return f"{PREFIX}adapters" + ("" if owner is None else f":{owner}")


ADAPTER_REFS = f"{PREFIX}adapter-refs"


def queue_name(task: str, model: str) -> str:
    """One RQ queue per task and model: a worker only ever takes jobs for models it has loaded."""
    return f"fresco-{task}-{model}"


def rq_queue(task: str, model: str) -> str:
    return Queue.redis_queue_namespace_prefix + queue_name(task, model)


RQ_QUEUES = Queue.redis_queues_keys


PRIORITIES = ("high", "normal", "low")  # the priority classes, highest first
FAIR_QUEUED, FAIR_RUNNING, FAIR_TAKEN, FAIR_LIMITS, FAIR_JOBS = (
    f"{PREFIX}fair:{name}" for name in ("queued", "running", "taken", "limits", "jobs"))


def fair_queue(task: str, model: str, priority: str) -> str:
    return f"{PREFIX}fair:{queue_name(task, model)}:{priority}"


def fair_queues(task: str, model: str) -> tuple[str, ...]:
    """The queue's class sets, highest priority first."""
    return tuple(fair_queue(task, model, p) for p in PRIORITIES)


def fair_tags(task: str, model: str) -> tuple[str, ...]:
    """The queue's key tags of each class, highest priority first."""
    return tuple(f"{fair_queue(task, model, p)}:tags" for p in PRIORITIES)


def fair_clock(task: str, model: str) -> str:
    return f"{PREFIX}fair:{queue_name(task, model)}:clock"


def fair_wake(task: str, model: str) -> str:
    return f"{PREFIX}fair:wake:{queue_name(task, model)}"


def rq_job(job_id: str) -> str:
    return Job.redis_job_namespace_prefix + job_id
