"""The job state machine: one typed function per Lua script, the only place their arguments are packed
and their replies read.

Each function returns a `Call`; run it with a sync client (`call.run(redis)`, the workers), an async
one (`await call.arun(redis)`, the API and the reaper), or queue several in one pipeline
(`run_all(redis, calls)`). Every key comes from `service/jobs/keys.py` and is passed as KEYS; every
status, stage and event from `service/jobs/states.py` is passed as ARGV. The transitions, and the one
function that performs each:

    (new) -> queued              submit        POST /generate
    queued -> (taken)            pick          a worker's next job under fair share and priorities
    queued|taken -> running      start         the worker that took it
                                 claim         a worker, for the jobs it batches with it or takes next
    queued -> canceled           cancel        DELETE /jobs/{id} (a running job is only flagged)
    running -> succeeded|failed|canceled
                                 end           the worker, when the job ends
    running -> queued|failed     reap          the reaper, when the job's worker is gone
    running -> failed            fail_stuck    the reaper, when a job outlives its timeout
    queued (lost) -> queued      restore       the reaper, when a queued job is on no RQ list or fair
                                               set, or was taken by a worker that never started it

A job whose request named a `webhook` is owed a delivery by the transitions its filter asks for
(start and claim: `start`; report: `progress`, at most one per interval; end, fail_stuck, cancel of a
queued job and reap to failed: `completed`). The script that makes the transition writes it to the
outbox in the same atomic step (scripts/lib/webhook_outbox.lua); each such function passes a fresh
delivery id and its key, used only when one is owed. service/webhooks/ delivers them.

Fair share (scripts/lib/fair.lua): RQ's list of a task and model keeps every queued job in the order
it came (what `rq info` shows), and a sorted set per priority class orders the same jobs the way workers
take them: start-time fair queueing per API key, weighted (`pick`, and `peek` for batching). Every script
that changes a job's status keeps its key's queued and running counts (`max_queued` at submit,
`max_running` at pick and claim).

Besides the job's: `rate_limit`, an API key's rate limit (a GCRA), for the API.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable, Generic, Sequence, TypeVar

import redis as redis_sync
import redis.asyncio as redis_async
from redis.exceptions import NoScriptError
from rq.job import Job
from rq.job import JobStatus as RQStatus
from rq.serializers import JSONSerializer

from service import lora_urls
from service.jobs import keys
from service.jobs.states import (CANCELED_BY_REQUEST, ErrorCode, JobStatus, WebhookEvent, done_event, ended_progress,
                                 job_error, progress_event, queued_progress)
from service.tasks import TASK_NAMES

T = TypeVar("T")
SCRIPTS = Path(__file__).with_name("scripts")
PROGRESS_WEBHOOK_EVERY_S = 1.0  # the least time between two progress deliveries of one job (default)
RQ_FAILURE_TTL_S = 24 * 3600  # how long RQ keeps a failed job's hash (Fresco's record is the truth)
_RQ_CONNECTION = redis_sync.Redis()  # RQ's Job wants one to build its hash; building never uses it


def now() -> float:
    return time.time()


def dumps(obj: Any) -> str:
    """JSON as stored in a job record and published in events: compact, UTF-8."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _str(value) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def decode_hash(raw) -> dict[str, str]:
    """A flat [k, v, k, v] list or a dict of bytes -> a dict of str."""
    items = raw.items() if isinstance(raw, dict) else zip(raw[::2], raw[1::2])
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in items}


# ---------------------------------------------------------------- running scripts

_SyncPipeline, _AsyncPipeline = redis_sync.client.Pipeline, redis_async.client.Pipeline


class Script:
    """One `<folder>/<name>.lua` (folder: this module's `scripts/`), after the `lib` snippets it calls
    (`scripts/lib/<lib>.lua`): its source and SHA, run by EVALSHA (loaded on first use per server)."""

    def __init__(self, name: str, folder: Path = SCRIPTS, lib: Sequence[str] = ()):
        self.name = name
        self.script = b"".join([*((SCRIPTS / "lib" / f"{n}.lua").read_bytes() for n in lib),
                                (folder / f"{name}.lua").read_bytes()])
        self.sha = hashlib.sha1(self.script).hexdigest()

    def run(self, client, keys_: Sequence[str], args: Sequence) -> Any:
        if isinstance(client, _SyncPipeline):
            client.scripts.add(self)  # the pipeline loads it, if needed, before it executes
            return client.evalsha(self.sha, len(keys_), *keys_, *args)
        try:
            return client.evalsha(self.sha, len(keys_), *keys_, *args)
        except NoScriptError:
            client.script_load(self.script)
            return client.evalsha(self.sha, len(keys_), *keys_, *args)

    async def arun(self, client, keys_: Sequence[str], args: Sequence) -> Any:
        if isinstance(client, _AsyncPipeline):
            client.scripts.add(self)
            return await client.evalsha(self.sha, len(keys_), *keys_, *args)
        try:
            return await client.evalsha(self.sha, len(keys_), *keys_, *args)
        except NoScriptError:
            await client.script_load(self.script)
            return await client.evalsha(self.sha, len(keys_), *keys_, *args)

    def __hash__(self) -> int:  # pipelines keep a set of the scripts they need
        return hash(self.sha)


VIEW, GCRA = (Script(n) for n in ("view", "gcra"))
SUBMIT, RESTORE, PICK = (Script(n, lib=("fair",)) for n in ("submit", "restore", "pick"))
PROGRESS = Script("progress", lib=("webhook_outbox",))
# The transitions that may owe a job's webhook a delivery, and change a job's status.
TRANSITION, CANCEL, REAP, CLAIM = (
    Script(n, lib=("webhook_outbox", "fair")) for n in ("transition", "cancel", "reap", "claim"))


@dataclass(slots=True)
class Call(Generic[T]):
    """One script invocation, packed: run it on a client, or queue it in a pipeline and `decode` the
    pipeline's reply for it."""

    script: Script
    keys: tuple[str, ...]
    args: tuple
    decode: Callable[[Any], T]

    def run(self, client) -> T:
        return self.decode(self.script.run(client, self.keys, self.args))

    async def arun(self, client) -> T:
        return self.decode(await self.script.arun(client, self.keys, self.args))

    def queue(self, pipe) -> None:
        self.script.run(pipe, self.keys, self.args)


def run_all(client, calls: Sequence[Call]) -> list:
    """Several calls in one round trip (sync client, no transaction), each reply decoded."""
    if len(calls) == 1:
        return [calls[0].run(client)]
    with client.pipeline(transaction=False) as pipe:
        for call in calls:
            call.queue(pipe)
        replies = pipe.execute()
    return [call.decode(reply) for call, reply in zip(calls, replies)]


def _is(expected: str) -> Callable[[Any], bool]:
    return lambda reply: _str(reply) == expected


def _moved(reply) -> bool:
    return bool(reply) and int(reply[0]) == 1


# ---------------------------------------------------------------- submit and view


def _rq_job_fields(job_id: str, task: str, model: str, timeout_s: int) -> dict:
    """RQ's own job hash (built with RQ's `Job` and JSON serializer, so an unmodified RQ worker reads
    it): a call of RQ_ENTRY_POINT with {id, task, model}."""
    job = Job.create(
        keys.RQ_ENTRY_POINT,
        args=[{"id": job_id, "task": task, "model": model}],
        connection=_RQ_CONNECTION,
        serializer=JSONSerializer,
        id=job_id,
        timeout=timeout_s,
        result_ttl=0,  # Fresco keeps its own record; RQ drops its copy when done
        failure_ttl=RQ_FAILURE_TTL_S,
        status=RQStatus.QUEUED,
        origin=keys.queue_name(task, model),
        description=f"fresco {task} {job_id}",
    )
    job.enqueued_at = datetime.now(timezone.utc)
    return job.to_dict()


@dataclass(frozen=True)
class Idempotency:
    """An Idempotency-Key claimed for this submit (service/api/idempotency.py): `key` is set to
    `value_prefix + job id` for `ttl_s`, if it still holds this request's `claim` (or, its claim expired,
    nothing)."""

    key: str
    value_prefix: str
    ttl_s: int
    claim: str = ""


@dataclass(frozen=True)
class Share:
    """An API key's part of the workers (service/api/keys.py): its `weight` in fair share, and its caps
    on queued (`max_queued`) and running (`max_running`) jobs (0: none). `fair` False: first come, first
    served across keys (priorities still apply)."""

    weight: float = 1.0
    max_queued: int = 0
    max_running: int = 0
    fair: bool = True


class Enqueued(StrEnum):
    """What `submit` did: only OK is true."""

    OK = "ok"
    FULL = "full"  # the task's queue is at its cap
    OWNER_FULL = "owner_full"  # the API key has `max_queued` jobs queued
    CLAIM_LOST = "claim_lost"  # the Idempotency-Key is another request's now (this one's claim expired)

    def __bool__(self) -> bool:
        return self is Enqueued.OK


def _class(priority: str) -> int:
    """A priority class's number in the scripts (1: highest)."""
    return keys.PRIORITIES.index(priority) + 1


_FAIR_COUNTS = (keys.FAIR_QUEUED, keys.FAIR_RUNNING, keys.FAIR_TAKEN)


def submit(job_id: str, task: str, model: str, params: dict, *, owner: str | None, retries: int, timeout_s: int,
           cap: int, idempotency: Idempotency | None = None, at: float | None = None, webhook: str | None = None,
           webhook_events: Sequence[WebhookEvent] = (), priority: str = "normal",
           share: Share = Share(), adapter_urls: dict[str, str] | None = None) -> Call[Enqueued]:
    """Enqueue in its `priority` class, under its key's `share`: Enqueued.OK, or why nothing was
    written. `webhook`: the URL the job's `webhook_events` are delivered to (kept out of `params`: its
    query may hold a token); `adapter_urls`: the full LoRA URLs `params` shows without their query
    (service/lora_urls.py `split`), which the worker reads back into them (`load_input`, `peek`, `claim`)."""
    at = now() if at is None else at
    owner = owner or ""
    record = {"id": job_id, "task": task, "model": model, "status": JobStatus.QUEUED, "created_at": repr(at),
              "params": dumps(params), "warnings": "[]", "progress": dumps(queued_progress()),
              "owner": owner, "retries_left": str(retries), "priority": priority,
              "fair_keys": dumps(keys.fair_queues(task, model))}
    if webhook:
        record.update(webhook=webhook, webhook_events=dumps(list(webhook_events)))
    if adapter_urls:
        record["adapter_urls"] = dumps(adapter_urls)
    args: list = [job_id, repr(at), cap, idempotency.value_prefix + job_id if idempotency else "",
                  idempotency.ttl_s if idempotency else 0, owner, share.max_queued, share.max_running,
                  _class(priority), owner if share.fair else "", repr(float(share.weight) if share.fair else 1.0),
                  idempotency.claim if idempotency else "", len(record)]
    for pair in record.items():
        args += pair
    for pair in _rq_job_fields(job_id, task, model, timeout_s).items():
        args += pair
    c = _class(priority) - 1
    keys_ = [keys.job(job_id), keys.rq_job(job_id), keys.status_index(task, JobStatus.QUEUED),
             keys.rq_queue(task, model), keys.RQ_QUEUES, *_FAIR_COUNTS, keys.FAIR_LIMITS, keys.FAIR_JOBS,
             keys.fair_clock(task, model), keys.fair_queues(task, model)[c], keys.fair_tags(task, model)[c],
             keys.fair_wake(task, model)]
    if idempotency:
        keys_.append(idempotency.key)
    return Call(SUBMIT, tuple(keys_), tuple(args), lambda reply: Enqueued(_str(reply)))


# The view's arguments that never change, encoded once: it is the API's hottest call.
_VIEW_KEYS = tuple(keys.status_index(t, JobStatus.QUEUED).encode() for t in TASK_NAMES)
_VIEW_ARGS = (JobStatus.QUEUED.encode(), *(p.encode() for p in keys.PRIORITIES), *(t.encode() for t in TASK_NAMES))


def _view_reply(raw) -> dict[str, str] | None:
    return decode_hash(raw) if raw else None


def view(job_id: str) -> Call[dict[str, str] | None]:
    """The job's record (str -> str), with `_queue_position` added; None when there is no such job."""
    return Call(VIEW, (keys.job(job_id), *_VIEW_KEYS), (job_id, *_VIEW_ARGS), _view_reply)


def load_input(client, job_id: str) -> tuple[dict, float, bool] | None:
    """A worker's read of the job it is about to start: its params (with their full LoRA URLs), creation
    time, and whether someone already watches its live previews (sync client)."""
    with client.pipeline(transaction=False) as pipe:
        pipe.hmget(keys.job(job_id), "params", "created_at", "adapter_urls")
        pipe.exists(keys.watched(job_id))
        (raw_params, raw_created, raw_urls), watched_ = pipe.execute()
    if raw_params is None:
        return None
    return _run_params(raw_params, raw_urls), float(raw_created), bool(watched_)


def _run_params(raw_params, raw_urls) -> dict:
    """A record's params as a worker runs them: each LoRA URL with its query (service/lora_urls.py)."""
    return lora_urls.restore(json.loads(raw_params), json.loads(raw_urls) if raw_urls else None)


# ---------------------------------------------------------------- transitions


def _delivery() -> tuple[str, str]:
    """A fresh webhook delivery id (the `webhook-id` its receiver sees, the same on every retry) and
    its hash's key, for a script that may owe the job's webhook a delivery."""
    delivery_id = f"msg_{uuid.uuid4().hex}"
    return delivery_id, keys.webhook_delivery(delivery_id)


def _transition(job_id: str, task: str, allowed: Sequence[JobStatus], to: JobStatus, *, ttl: int = 0,
                event: dict | None = None, webhook: WebhookEvent | None = None, at: float | None = None,
                **fields) -> Call[bool]:
    at = now() if at is None else at
    delivery_id, delivery_key = _delivery()
    args: list = [job_id, len(allowed), *allowed, to, repr(at), ttl, dumps(event) if event else "", webhook or "",
                  delivery_id, JobStatus.QUEUED, JobStatus.RUNNING]
    for name, value in fields.items():
        args += [name, value if isinstance(value, str) else dumps(value)]
    keys_ = (keys.job(job_id), *(keys.status_index(task, s) for s in allowed), keys.status_index(task, to),
             keys.events(job_id), keys.WEBHOOKS_DUE, delivery_key, *_FAIR_COUNTS)
    return Call(TRANSITION, keys_, tuple(args), _moved)


def start(job_id: str, task: str, *, worker: str, progress: dict, at: float) -> Call[bool]:
    """queued -> running on `worker`; False when the job was no longer queued (canceled meanwhile)."""
    return _transition(job_id, task, (JobStatus.QUEUED,), JobStatus.RUNNING, at=at,
                       event=progress_event(JobStatus.RUNNING, progress), webhook=WebhookEvent.START,
                       started_at=repr(at), worker=worker, progress=progress)


def end(job_id: str, task: str, status: JobStatus, *, ttl: int, progress: dict, at: float | None = None,
        **fields) -> Call[bool]:
    """running -> succeeded | failed | canceled, with the job's final fields (result, error, timings,
    warnings); the record then expires after `ttl` seconds."""
    at = now() if at is None else at
    return _transition(job_id, task, (JobStatus.RUNNING,), status, ttl=ttl, at=at, event=done_event(status),
                       webhook=WebhookEvent.COMPLETED, finished_at=repr(at), progress=progress, **fields)


def fail_stuck(job_id: str, task: str, *, message: str, ttl: int, at: float) -> Call[bool]:
    """running -> failed/timeout, for a job its worker is stuck in past its timeout."""
    return _transition(job_id, task, (JobStatus.RUNNING,), JobStatus.FAILED, ttl=ttl, at=at,
                       event=done_event(JobStatus.FAILED), webhook=WebhookEvent.COMPLETED, finished_at=repr(at),
                       error=job_error(ErrorCode.TIMEOUT, message))


@dataclass(frozen=True)
class Reported:
    stop: bool  # the job should stop: a cancel was asked for, or it is no longer running
    watched: bool  # someone watches its live previews (keys.watched): the worker makes them


PREVIEW_TTL_S = 120  # a job's latest preview outlives its last report this long


def report(job_id: str, progress: dict, *, preview: str | None = None,
           webhook_every_s: float = PROGRESS_WEBHOOK_EVERY_S, at: float | None = None) -> Call[Reported]:
    """Store and publish a running job's progress (with `preview`, a live preview's data URL, also kept
    apart as the job's latest and carried by the published event). A job whose webhook wants progress is
    owed a delivery when none was in the last `webhook_every_s`."""
    delivery_id, delivery_key = _delivery()
    event = progress_event(JobStatus.RUNNING, progress)
    if preview:
        event["preview"] = preview
    return Call(PROGRESS, (keys.job(job_id), keys.events(job_id), keys.WEBHOOKS_DUE, delivery_key,
                           keys.preview(job_id), keys.watched(job_id)),
                (JobStatus.RUNNING, dumps(progress), dumps(event), WebhookEvent.PROGRESS, delivery_id,
                 repr(now() if at is None else at), webhook_every_s, preview or "", PREVIEW_TTL_S),
                lambda reply: Reported(stop=reply == 1, watched=reply == 2))


async def watch(client, job_id: str, ttl_s: float) -> None:
    """Someone watches the job's live previews for the next `ttl_s` seconds (renewed while they do;
    async client: the API)."""
    await client.set(keys.watched(job_id), "1", px=int(ttl_s * 1000))


async def latest_preview(client, job_id: str) -> str | None:
    """The job's latest live preview, while it runs and a little after (async client: the API)."""
    return _str(await client.get(keys.preview(job_id)))


class CancelOutcome(StrEnum):
    CANCELED = "canceled"  # it was queued: canceled now
    FLAGGED = "running"  # it is running: its worker stops it at the next step
    ENDED = "ended"  # it had already ended
    MISSING = "missing"  # no such job


def cancel(job_id: str, task: str, model: str, *, ttl: int, at: float | None = None) -> Call[CancelOutcome]:
    at = now() if at is None else at
    delivery_id, delivery_key = _delivery()
    keys_ = (keys.job(job_id), keys.rq_queue(task, model), keys.rq_job(job_id),
             keys.status_index(task, JobStatus.QUEUED), keys.status_index(task, JobStatus.CANCELED),
             keys.events(job_id), keys.WEBHOOKS_DUE, delivery_key, *_FAIR_COUNTS, *_fair_queue_keys(task, model))
    args = (job_id, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELED, repr(at), ttl,
            dumps(job_error(ErrorCode.CANCELED, CANCELED_BY_REQUEST)), dumps(done_event(JobStatus.CANCELED)),
            dumps(ended_progress()), WebhookEvent.COMPLETED, delivery_id)
    return Call(CANCEL, keys_, args, lambda reply: CancelOutcome(_str(reply)) if reply else CancelOutcome.MISSING)


def reap(job_id: str, task: str, model: str, *, worker: str, ttl: int, at: float,
         priority: str = "normal") -> Call[JobStatus | None]:
    """A running job whose worker is gone: its new status, queued (a retry was left: back in its
    `priority` class, with its start tag) or failed (worker_lost), or None when it was not running on
    `worker` any more."""
    delivery_id, delivery_key = _delivery()
    c = _class(priority) - 1
    keys_ = (keys.job(job_id), keys.rq_queue(task, model), keys.status_index(task, JobStatus.RUNNING),
             keys.status_index(task, JobStatus.QUEUED), keys.status_index(task, JobStatus.FAILED),
             keys.events(job_id), keys.WEBHOOKS_DUE, delivery_key, *_FAIR_COUNTS, keys.FAIR_JOBS,
             keys.fair_clock(task, model), keys.fair_queues(task, model)[c], keys.fair_tags(task, model)[c],
             keys.fair_wake(task, model))
    args = (job_id, worker, repr(at), ttl, JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.FAILED,
            dumps(job_error(ErrorCode.WORKER_LOST, "the worker running this job stopped answering")),
            dumps(progress_event(JobStatus.QUEUED, queued_progress())), dumps(done_event(JobStatus.FAILED)),
            dumps(ended_progress()), dumps(queued_progress()), WebhookEvent.COMPLETED, delivery_id, c + 1)
    outcomes = {"requeued": JobStatus.QUEUED, "failed": JobStatus.FAILED}
    return Call(REAP, keys_, args, lambda reply: outcomes[_str(reply)] if reply else None)


TAKEN_GRACE_S = 10.0  # a job a worker took and has not started this long is back on its queue (the worker died)


def restore(job_id: str, task: str, model: str, *, priority: str = "normal", at: float | None = None,
            grace_s: float = TAKEN_GRACE_S) -> Call[bool]:
    """A queued job found on no RQ list or in no class set, or taken by a worker that has not started it
    within `grace_s`, goes back: True when it did."""
    c = _class(priority) - 1
    return Call(RESTORE, (keys.job(job_id), keys.rq_queue(task, model), keys.rq_job(job_id), *_FAIR_COUNTS,
                          keys.FAIR_JOBS, keys.fair_clock(task, model), keys.fair_queues(task, model)[c],
                          keys.fair_tags(task, model)[c], keys.fair_wake(task, model)),
                (job_id, JobStatus.QUEUED, repr(now() if at is None else at), grace_s, c + 1),
                lambda reply: bool(reply))


def _fair_queue_keys(task: str, model: str) -> tuple[str, ...]:
    """A queue's fair-share keys, as cancel and claim take them: the fair jobs, its clock, its class sets
    and their key tags."""
    return (keys.FAIR_JOBS, keys.fair_clock(task, model), *keys.fair_queues(task, model), *keys.fair_tags(task, model))


PICK_SCAN = 64  # the entries of a class set `pick` looks at for a key under its max_running


def pick(queues: Sequence[tuple[str, str]], *, at: float | None = None) -> Call[tuple[int, str] | None]:
    """The next job for a worker of `queues` ((task, model), in its order), taken off its queue: (its
    queue's index in `queues`, its id), or None when none can be taken now (sync client: the worker)."""
    keys_: list[str] = [*_FAIR_COUNTS, keys.FAIR_LIMITS, keys.FAIR_JOBS]
    for task, model in queues:
        keys_ += [keys.rq_queue(task, model), keys.fair_clock(task, model), *keys.fair_queues(task, model),
                  *keys.fair_tags(task, model)]
    return Call(PICK, tuple(keys_), (repr(now() if at is None else at), PICK_SCAN),
                lambda reply: (int(reply[0]) - 1, _str(reply[1])) if reply else None)


# ---------------------------------------------------------------- dynamic batching


def peek(client, task: str, model: str, window: int) -> list[tuple[str, dict]]:
    """The next queued jobs of a task and model in the order workers take them (its class sets, highest
    first), with their params, for a worker to choose compatible ones from (sync client, two round
    trips; `claim` is what takes them)."""
    ids: list[str] = []
    with client.pipeline(transaction=False) as pipe:
        for zset in keys.fair_queues(task, model):
            pipe.zrange(zset, 0, window - 1)
        for head in pipe.execute():
            ids += [_str(i) for i in head]
    ids = ids[:window]
    if not ids:
        return []
    with client.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(keys.job(job_id), "status", "params", "adapter_urls")
        rows = pipe.execute()
    return [(job_id, _run_params(params, urls)) for job_id, (status, params, urls) in zip(ids, rows)
            if params is not None and _str(status) == JobStatus.QUEUED]


@dataclass(frozen=True)
class Claimed:
    id: str
    params: dict
    created: float


def claim(task: str, model: str, job_ids: Sequence[str], *, worker: str, progress: dict,
          at: float) -> Call[list[Claimed]]:
    """Take `job_ids` off the task and model's queue and start them on `worker` (queued -> running);
    the jobs another worker took first, that were canceled, or whose key is at its `max_running` are
    left out of the answer."""
    keys_: list[str] = [keys.rq_queue(task, model), keys.status_index(task, JobStatus.QUEUED),
                        keys.status_index(task, JobStatus.RUNNING), keys.WEBHOOKS_DUE, *_FAIR_COUNTS,
                        keys.FAIR_LIMITS, *_fair_queue_keys(task, model)]
    args: list = [repr(at), worker, dumps(progress), dumps(progress_event(JobStatus.RUNNING, progress)),
                  JobStatus.QUEUED, JobStatus.RUNNING, RQStatus.STARTED.value, WebhookEvent.START]
    for job_id in job_ids:
        delivery_id, delivery_key = _delivery()
        keys_ += [keys.job(job_id), keys.rq_job(job_id), keys.events(job_id), delivery_key]
        args += [job_id, delivery_id]

    def decode(reply) -> list[Claimed]:
        return [Claimed(_str(i), _run_params(p, u), float(c))
                for i, p, c, u in zip(reply[::4], reply[1::4], reply[2::4], reply[3::4])]

    return Call(CLAIM, tuple(keys_), tuple(args), decode)


def forget_rq_job(pipe, job_id: str) -> None:
    """Queue the deletion of a job's RQ hash (what RQ does for the job it ran, result_ttl=0) for a job
    the worker claimed itself."""
    pipe.delete(keys.rq_job(job_id))


# ---------------------------------------------------------------- rate limits


def _rate_reply(reply) -> float | None:
    allowed, wait_ms = reply
    return None if int(allowed) else int(wait_ms) / 1000


def rate_limit(owner: str, per_minute: int, *, at: float | None = None) -> Call[float | None]:
    """One request of API key `owner`, limited to `per_minute` requests a minute with bursts up to
    `per_minute` (a GCRA): None when it is allowed (and counted), else the seconds until one is."""
    interval = 60_000 / per_minute
    at_ms = int((now() if at is None else at) * 1000)
    return Call(GCRA, (keys.rate(owner),), (at_ms, interval, interval * (per_minute - 1)), _rate_reply)
