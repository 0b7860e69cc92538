"""The webhook outbox, written by the transitions themselves (scripts/lib/webhook_outbox.lua), on a real
Redis: each transition a job's filter asks for leaves exactly one delivery, in the same step, holding
the job as the transition left it; the others, and jobs without a webhook, leave none."""

from __future__ import annotations

import json
import uuid

import pytest

from service.jobs import keys, protocol
from service.jobs.protocol import CancelOutcome
from service.jobs.states import JobStatus
from tests.service.jobs.test_protocol import MODEL, TASK, record

URL = "https://hooks.example.com/fresco?token=s3cret"
ALL = ["start", "progress", "completed"]
PROGRESS = {"stage": "denoise", "step": 1, "total_steps": 2, "fraction": 0.4}


@pytest.fixture
def redis(module_redis):
    return module_redis


def new(redis, events=("completed",), *, webhook: str | None = URL, retries: int = 0) -> str:
    job_id = str(uuid.uuid4())
    assert protocol.submit(job_id, TASK, MODEL, {"prompt": "p", "seed": 1}, owner=None, retries=retries,
                           timeout_s=60, cap=0, webhook=webhook, webhook_events=list(events)).run(redis)
    return job_id


def start(redis, job_id: str, worker: str = "w1", at: float = 100.0) -> bool:
    return protocol.start(job_id, TASK, worker=worker, progress={"stage": "denoise", "step": 0}, at=at).run(redis)


def end(redis, job_id: str, status=JobStatus.SUCCEEDED, at: float = 200.0) -> bool:
    return protocol.end(job_id, TASK, status, ttl=60, progress={"stage": "done"}, at=at,
                        result={"images": [{"name": "0.png"}]}).run(redis)


def deliveries(redis) -> list[dict]:
    """Every delivery in the outbox, due order, each with its id and the job snapshot parsed."""
    out = []
    for raw_id, due in redis.zrange(keys.WEBHOOKS_DUE, 0, -1, withscores=True):
        h = protocol.decode_hash(redis.hgetall(keys.webhook_delivery(raw_id.decode())))
        assert set(h) <= keys.DELIVERY_FIELDS
        out.append({**h, "id": raw_id.decode(), "due": due, "snapshot": json.loads(h["snapshot"])})
    return out


def events_of(redis) -> list[str]:
    return [d["event"] for d in deliveries(redis)]


def test_submit_keeps_the_webhook_in_the_record_not_in_params(redis):
    job_id = new(redis, ALL)
    h = record(redis, job_id)
    assert h["webhook"] == URL and json.loads(h["webhook_events"]) == ALL
    assert "webhook" not in json.loads(h["params"])
    assert set(h) <= keys.JOB_FIELDS


def test_a_job_without_a_webhook_owes_nothing(redis):
    job_id = new(redis, webhook=None)
    start(redis, job_id)
    protocol.report(job_id, PROGRESS).run(redis)
    end(redis, job_id)
    assert redis.zcard(keys.WEBHOOKS_DUE) == 0 and "webhook" not in record(redis, job_id)


def test_the_default_filter_owes_only_the_completed_event(redis):
    job_id = new(redis)
    start(redis, job_id)
    protocol.report(job_id, PROGRESS, at=150.0).run(redis)
    assert redis.zcard(keys.WEBHOOKS_DUE) == 0
    assert end(redis, job_id, at=200.0)
    [d] = deliveries(redis)
    assert (d["job"], d["event"], d["url"], d["created_at"], d["seq"], d["due"]) == \
        (job_id, "completed", URL, "200.0", "1", 200.0)
    assert d["id"].startswith("msg_") and d["attempts"] == "0"
    # The snapshot is the record as the transition left it: what the body's JobView shows.
    snap = d["snapshot"]
    assert snap["status"] == "succeeded" and snap["finished_at"] == "200.0"
    assert json.loads(snap["result"]) == {"images": [{"name": "0.png"}]}
    assert record(redis, job_id)["webhook_enqueued"] == "1"


def test_every_event_in_order_each_with_its_own_id(redis):
    job_id = new(redis, ALL)
    start(redis, job_id, at=100.0)
    protocol.report(job_id, PROGRESS, at=101.0).run(redis)
    end(redis, job_id, at=102.0)
    ds = deliveries(redis)
    assert [(d["event"], d["seq"], d["snapshot"]["status"]) for d in ds] == \
        [("start", "1", "running"), ("progress", "2", "running"), ("completed", "3", "succeeded")]
    assert json.loads(ds[1]["snapshot"]["progress"]) == PROGRESS
    assert len({d["id"] for d in ds}) == 3


def test_progress_is_owed_at_most_once_per_interval(redis):
    job_id = new(redis, ["progress"])
    start(redis, job_id)
    for at in (10.0, 10.4, 10.9, 11.0, 11.5, 12.2):
        protocol.report(job_id, {**PROGRESS, "step": int(at * 10)}, webhook_every_s=1.0, at=at).run(redis)
    assert [d["created_at"] for d in deliveries(redis)] == ["10.0", "11.0", "12.2"]
    assert record(redis, job_id)["webhook_progress_at"] == "12.2"


def test_a_progress_report_for_a_job_that_is_not_running_owes_nothing(redis):
    job_id = new(redis, ALL)
    assert protocol.report(job_id, PROGRESS).run(redis).stop is True  # queued: stop, nothing stored
    assert redis.zcard(keys.WEBHOOKS_DUE) == 0


def test_a_transition_that_does_not_happen_owes_nothing(redis):
    job_id = new(redis, ALL)
    assert end(redis, job_id) is False  # not running
    start(redis, job_id)
    assert start(redis, job_id, "w2") is False  # started already
    assert events_of(redis) == ["start"]


def test_cancel_of_a_queued_job_owes_completed_and_of_a_running_one_nothing_yet(redis):
    queued, running = new(redis), new(redis)
    start(redis, running)
    assert protocol.cancel(running, TASK, MODEL, ttl=60).run(redis) is CancelOutcome.FLAGGED
    assert redis.zcard(keys.WEBHOOKS_DUE) == 0  # the worker's end owes it, when it stops
    assert protocol.cancel(queued, TASK, MODEL, ttl=60).run(redis) is CancelOutcome.CANCELED
    [d] = deliveries(redis)
    assert (d["job"], d["event"], d["snapshot"]["status"]) == (queued, "completed", "canceled")
    end(redis, running, JobStatus.CANCELED)
    assert sorted((d["job"], d["snapshot"]["status"]) for d in deliveries(redis)) == \
        sorted([(queued, "canceled"), (running, "canceled")])


def test_a_requeued_job_gets_a_new_start_delivery_and_a_lost_one_completed(redis):
    job_id = new(redis, ALL, retries=1)
    redis.lpop(keys.rq_queue(TASK, MODEL))
    start(redis, job_id, "gone", at=100.0)
    assert protocol.reap(job_id, TASK, MODEL, worker="gone", ttl=60, at=110.0).run(redis) is JobStatus.QUEUED
    assert events_of(redis) == ["start"]  # back to queued: no event
    start(redis, job_id, "gone-too", at=120.0)
    assert protocol.reap(job_id, TASK, MODEL, worker="gone-too", ttl=60, at=130.0).run(redis) is JobStatus.FAILED
    ds = deliveries(redis)
    assert [(d["event"], d["seq"]) for d in ds] == [("start", "1"), ("start", "2"), ("completed", "3")]
    assert ds[0]["id"] != ds[1]["id"]
    assert json.loads(ds[2]["snapshot"]["error"])["code"] == "worker_lost"


def test_fail_stuck_owes_completed(redis):
    job_id = new(redis)
    start(redis, job_id)
    assert protocol.fail_stuck(job_id, TASK, message="stuck", ttl=60, at=400.0).run(redis)
    [d] = deliveries(redis)
    assert d["event"] == "completed" and json.loads(d["snapshot"]["error"])["code"] == "timeout"


def test_claim_owes_each_claimed_job_that_wants_it_a_start_delivery(redis):
    wants, does_not, plain = new(redis, ["start"]), new(redis), new(redis, webhook=None)
    ids = [wants, does_not, plain]
    claimed = protocol.claim(TASK, MODEL, ids, worker="w1", progress={"step": 0}, at=500.0).run(redis)
    assert [c.id for c in claimed] == ids
    [d] = deliveries(redis)
    assert (d["job"], d["event"], d["snapshot"]["worker"]) == (wants, "start", "w1")
