"""Webhooks end to end: a real API process (running the dispatcher) and worker (the e2e keyed stack,
tests/e2e/conftest.py), and a real receiver on 127.0.0.1 verifying every signature with `standardwebhooks`."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import wait_status
from tests.e2e.conftest import KEYS, WEBHOOK_SECRET
from tests.e2e.test_metrics import families, samples
from tests.webhook_receiver import Receiver, types

TURBO = {"task": "turbo", "prompt": "a fox", "width": 256, "height": 256}


@pytest.fixture(scope="module")
def hooked(keyed_stack):
    return keyed_stack


@pytest.fixture
def client(hooked):
    with hooked.client(KEYS["webhooks"]) as c:
        yield c


@pytest.fixture
def receiver():
    rx = Receiver(WEBHOOK_SECRET)
    yield rx
    rx.stop()


def submit(client, receiver, events=("completed",)) -> dict:
    r = client.post("/generate", json={**TURBO, "webhook": receiver.url + "?token=t0k3n",
                                       "webhook_events_filter": list(events)})
    assert r.status_code == 202, r.text
    return r.json()


def settled(client, job_id: str, timeout: float = 30) -> dict:
    """The job's `webhook` once its deliveries are delivered or given up (nothing owed is in flight)."""
    deadline = time.time() + timeout
    while True:
        webhook = client.get(f"/jobs/{job_id}").json()["webhook"]
        if webhook["delivered"] or webhook["last_status"] == 410 or time.time() > deadline:
            return webhook
        time.sleep(0.1)


def test_start_progress_and_completed_arrive_in_order_signed(client, receiver, hooked):
    job = submit(client, receiver, ["start", "progress", "completed"])
    assert wait_status(client, job["id"], {"succeeded"})["status"] == "succeeded"
    got = receiver.wait_for(lambda: [r for r in receiver.of_job(job["id"]) if r.type == "job.completed"]
                            and receiver.of_job(job["id"]))
    kinds = types(got)
    assert kinds[0] == "job.start" and kinds[-1] == "job.completed" and "job.progress" in kinds, kinds
    assert set(kinds[1:-1]) == {"job.progress"} and receiver.invalid == 0
    assert len({r.id for r in got}) == len(got)  # each event its own webhook-id
    assert [r.data["status"] for r in got] == ["running"] * (len(got) - 1) + ["succeeded"]
    image = got[-1].data["result"]["images"][0]["url"]
    assert image.startswith(hooked.url) and httpx.get(image).status_code == 200
    assert settled(client, job["id"]) == {"url": receiver.url, "events": ["start", "progress", "completed"],
                                          "delivered": True, "attempts": len(got), "last_status": 200}


def test_a_receiver_down_then_failing_gets_it_once_up(client, receiver):
    receiver.stop()  # connection refused
    job = submit(client, receiver)
    wait_status(client, job["id"], {"succeeded"})
    time.sleep(1.0)
    receiver.answer(200, first=[503, 503])
    receiver.start()
    got = receiver.wait_for(lambda: [r for r in receiver.of_job(job["id"]) if r.status == 200])
    assert [r.status for r in receiver.of_job(job["id"])] == [503, 503, 200]
    assert len({r.id for r in receiver.of_job(job["id"])}) == 1 and got[0].type == "job.completed"
    webhook = settled(client, job["id"])
    assert webhook["delivered"] is True and webhook["attempts"] > 3 and webhook["last_status"] == 200


def test_a_410_is_given_up_and_not_retried_and_metrics_say_so(client, receiver):
    receiver.answer(410)
    job = submit(client, receiver)
    wait_status(client, job["id"], {"succeeded"})
    receiver.wait_for(lambda: receiver.of_job(job["id"]))
    webhook = settled(client, job["id"])
    assert webhook | {"url": None} == {"url": None, "events": ["completed"], "delivered": False, "attempts": 1,
                                       "last_status": 410}
    time.sleep(1.0)
    assert len(receiver.of_job(job["id"])) == 1
    fams = families(client.get("/metrics").text)
    assert samples(fams["fresco_webhook_deliveries"], outcome="gave_up")[0].value >= 1
    assert samples(fams["fresco_webhook_attempts"], result="client_error")[0].value >= 1
    assert fams["fresco_webhook_deliveries_pending"].samples[0].value >= 0
    assert "fresco_webhook_delivery_lag_seconds" in fams
