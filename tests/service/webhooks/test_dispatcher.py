"""service/webhooks/dispatcher.py and outbox.py with real parts: a real Redis (the module's own), jobs
moved by the real transitions, and a real HTTP receiver verifying each signature with `standardwebhooks`.
The dispatcher runs in-process, a round at a time; tests/e2e/test_webhooks.py runs it in the API, and
tests/faults/test_webhook_dispatcher_kill.py kills a standalone one."""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import pytest
from prometheus_client import CollectorRegistry

from service.api.schemas import JobView
from service.jobs import keys, protocol
from service.jobs.states import JobStatus
from service.jobs.view import to_view
from service.redis import async_client
from service.settings import Settings
from service.webhooks import outbox, signing
from service.webhooks.dispatcher import MAX_BACKOFF_S, Dispatcher
from service.webhooks.metrics import WebhookMetrics
from service.webhooks.outbox import Delivery
from tests.service.jobs.test_protocol import assert_spells_no_key
from tests.webhook_receiver import Receiver, types

SECRET = signing.new_secret()
TASK, MODEL = "turbo", "m1"
RESULT = {"images": [{"name": "0.png", "content_type": "image/png", "width": 8, "height": 8, "seed": 1}]}
DONE = {"stage": "done", "step": 1, "total_steps": 1, "fraction": 1.0}


@pytest.fixture
def redis(module_redis):
    return module_redis


@pytest.fixture
def receiver():
    rx = Receiver(SECRET)
    yield rx
    rx.stop()


def settings_for(server, **overrides) -> Settings:
    values = dict(redis_url=server.url, webhook_secret=SECRET, webhook_allow_private=True, webhook_backoff_s=0.01,
                  webhook_timeout_s=2.0)
    return Settings(**{**values, **overrides})


class Run:
    """Dispatcher rounds in-process: take what is due, attempt it all, repeat until `until()` holds."""

    def __init__(self, server, **overrides):
        self.settings = settings_for(server, **overrides)
        self.registry = CollectorRegistry()
        self.metrics = WebhookMetrics(self.registry)

    def __call__(self, until=lambda: True, timeout: float = 10.0, rng: random.Random | None = None) -> "Run":
        async def main():
            redis = async_client(self.settings.redis_url)
            dispatcher = Dispatcher(redis, self.settings, self.metrics, rng=rng)
            deadline = time.monotonic() + timeout
            try:
                while True:
                    await dispatcher.dispatch_due()
                    await dispatcher.idle()
                    if until():
                        return
                    assert time.monotonic() < deadline, "the dispatcher never got there"
                    await asyncio.sleep(0.02)
            finally:
                await dispatcher.stop()
                await redis.aclose()

        asyncio.run(main())
        return self

    def sample(self, name: str, **labels) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


def job(redis, url: str, events=("completed",), *, ended: bool = True, at: float | None = None,
        owner: str | None = None) -> str:
    """A job of API key `owner` with a webhook, started and (`ended`) succeeded through the real
    transitions at time `at`."""
    at = protocol.now() if at is None else at
    job_id = str(uuid.uuid4())
    protocol.submit(job_id, TASK, MODEL, {"prompt": "p", "seed": 1}, owner=owner, retries=0, timeout_s=60, cap=0,
                    webhook=url, webhook_events=list(events), at=at).run(redis)
    protocol.start(job_id, TASK, worker="w", progress={"stage": "denoise", "step": 0, "total_steps": 1,
                                                       "fraction": 0.0}, at=at).run(redis)
    if ended:
        protocol.end(job_id, TASK, JobStatus.SUCCEEDED, ttl=600, progress=DONE, at=at, result=RESULT).run(redis)
    return job_id


def view(redis, job_id: str) -> dict:
    return to_view(protocol.view(job_id).run(redis), "http://api")


def pending(redis) -> int:
    return redis.zcard(keys.WEBHOOKS_DUE)


def test_deliveries_are_signed_jobviews_in_order_and_the_job_reports_them(module_server, redis, receiver):
    job_id = job(redis, receiver.url + "?token=abc", ["start", "completed"])
    run = Run(module_server, public_url="https://fresco.example.com")(until=lambda: len(receiver.received) == 2)
    assert receiver.invalid == 0
    start, completed = receiver.received
    assert types(receiver.received) == ["job.start", "job.completed"]
    assert start.data["status"] == "running" and completed.data["status"] == "succeeded"
    JobView.model_validate(completed.data)  # the contract's JobView, as GET /jobs/{id} answers it
    assert completed.data["result"]["images"][0]["url"] == f"https://fresco.example.com/results/{job_id}/0.png"
    assert completed.data["webhook"]["url"] == receiver.url  # never the query: it may hold a token
    assert start.id != completed.id and start.id.startswith("msg_")
    assert view(redis, job_id)["webhook"] == {"url": receiver.url, "events": ["start", "completed"],
                                              "delivered": True, "attempts": 2, "last_status": 200}
    assert pending(redis) == 0 and not redis.keys(keys.webhook_delivery("*"))
    assert run.sample("fresco_webhook_deliveries_total", outcome="delivered") == 2
    assert run.sample("fresco_webhook_attempts_total", result="success") == 2
    assert run.sample("fresco_webhook_delivery_lag_seconds_count") == 2


def test_retries_send_the_same_id_and_bytes_until_delivered(module_server, redis, receiver):
    receiver.answer(200, first=[503, 500, 429])
    job_id = job(redis, receiver.url)
    run = Run(module_server)(until=lambda: receiver.of_job(job_id)[-1:] and receiver.received[-1].status == 200)
    got = receiver.of_job(job_id)
    assert [r.status for r in got] == [503, 500, 429, 200]
    assert len({r.id for r in got}) == 1 and len({r.body for r in got}) == 1  # rendered once, kept
    assert view(redis, job_id)["webhook"] | {"url": None} == {"url": None, "events": ["completed"], "delivered": True,
                                                              "attempts": 4, "last_status": 200}
    assert run.sample("fresco_webhook_attempts_total", result="server_error") == 2
    assert run.sample("fresco_webhook_attempts_total", result="throttled") == 1
    assert run.sample("fresco_webhook_deliveries_total", outcome="delivered") == 1


def test_a_refused_connection_is_retried_and_reported_without_a_status(module_server, redis, receiver):
    receiver.stop()
    job_id = job(redis, receiver.url)
    run = Run(module_server)()
    [delivery] = asyncio.run(_read(module_server, redis))
    assert delivery.attempts == 1 and delivery.body is not None and delivery.snapshot is None
    assert view(redis, job_id)["webhook"]["last_status"] is None
    assert run.sample("fresco_webhook_attempts_total", result="connection_error") == 1
    receiver.start()
    run(until=lambda: receiver.of_job(job_id))
    assert view(redis, job_id)["webhook"]["delivered"] is True and pending(redis) == 0


@pytest.mark.parametrize("status", [410, 400, 302])
def test_an_answer_that_is_not_retried_gives_up_at_once(module_server, redis, receiver, status):
    receiver.answer(status)
    job_id = job(redis, receiver.url)
    run = Run(module_server)()
    assert [r.status for r in receiver.received] == [status]  # once, and a redirect is not followed
    assert pending(redis) == 0
    assert view(redis, job_id)["webhook"] | {"url": None} == {"url": None, "events": ["completed"],
                                                              "delivered": False, "attempts": 1, "last_status": status}
    assert run.sample("fresco_webhook_deliveries_total", outcome="gave_up") == 1
    run(timeout=0.2)
    assert len(receiver.received) == 1


def test_retry_after_is_the_least_wait(module_server, redis, receiver):
    receiver.answer(429, retry_after=120)
    job(redis, receiver.url)
    before = time.time()
    Run(module_server)()
    [(_, due)] = redis.zrange(keys.WEBHOOKS_DUE, 0, -1, withscores=True)
    assert before + 119 < due < time.time() + 121


def test_past_the_retry_window_a_failing_delivery_gives_up(module_server, redis, receiver):
    receiver.answer(503)
    job_id = job(redis, receiver.url, at=time.time() - 3601)  # the event was over an hour ago
    run = Run(module_server, webhook_retry_for_s=3600)()
    assert len(receiver.received) == 1 and pending(redis) == 0
    assert view(redis, job_id)["webhook"]["delivered"] is False
    assert run.sample("fresco_webhook_deliveries_total", outcome="gave_up") == 1


def test_a_private_address_is_blocked_unless_allowed(module_server, redis, receiver):
    job_id = job(redis, receiver.url.replace("http:", "https:"))
    run = Run(module_server, webhook_allow_private=False)()
    assert receiver.received == [] and pending(redis) == 0
    assert view(redis, job_id)["webhook"]["delivered"] is False
    assert run.sample("fresco_webhook_attempts_total", result="blocked") == 1


def test_a_delivery_whose_dispatcher_died_is_due_again_when_its_lease_ends(module_server, redis, receiver):
    job_id = job(redis, receiver.url, owner="a")
    now = time.time()
    [due] = [(i.decode(), "a") for i in redis.zrange(keys.WEBHOOKS_DUE, 0, -1)]
    # Taken by a dispatcher that then died, holding its key's only slot.
    assert len(outbox.take(now, now + 0.5, 10, 1, [due]).run(redis)) == 1
    run = Run(module_server, webhook_max_in_flight_per_key=1)()
    assert receiver.received == []  # leased: nobody else takes it meanwhile
    run(until=lambda: receiver.of_job(job_id))  # the lease ran out: its slot came back with it
    assert len(receiver.received) == 1 and pending(redis) == 0 and not redis.exists(keys.WEBHOOKS_LEASED)


def test_a_delivery_settled_elsewhere_counts_once(module_server, redis, receiver):
    job_id = job(redis, receiver.url)
    [delivery] = asyncio.run(_read(module_server, redis))
    assert outbox.settle(delivery, retry_at=None, delivered=True, status=200).run(redis) is True
    assert outbox.settle(delivery, retry_at=None, delivered=True, status=200).run(redis) is False
    assert view(redis, job_id)["webhook"]["attempts"] == 1 and pending(redis) == 0


def test_an_expired_job_record_is_not_brought_back(module_server, redis, receiver):
    job_id = job(redis, receiver.url)
    redis.delete(keys.job(job_id))
    Run(module_server)(until=lambda: receiver.received)
    assert receiver.received[0].data["id"] == job_id  # rendered from the snapshot
    assert not redis.exists(keys.job(job_id)) and pending(redis) == 0


def test_backoff_is_exponential_with_full_jitter_capped_and_ends_at_the_window(module_server, redis):
    settings = settings_for(module_server, webhook_backoff_s=2.0)
    dispatcher = Dispatcher(None, settings, WebhookMetrics(CollectorRegistry()), rng=random.Random(1))
    now = time.time()

    def delivery(attempts: int, created_at: float = now) -> Delivery:
        return Delivery("msg_x", "j", "completed", "https://x", created_at, 1, attempts, "{}", None)

    for attempts in range(12):
        delays = [dispatcher.retry_at(delivery(attempts), None) - time.time() for _ in range(50)]
        bound = min(MAX_BACKOFF_S, 2.0 * 2 ** attempts)
        assert all(-0.1 <= d <= bound + 0.1 for d in delays) and max(delays) > bound / 2
    assert dispatcher.retry_at(delivery(0), 300) - time.time() > 299  # Retry-After as the least wait
    window = dispatcher.settings.webhook_retry_for_s
    late = delivery(20, created_at=now - window + 10)
    assert dispatcher.retry_at(late, None) <= now + 10.01  # the last attempt is at the window's end
    assert dispatcher.retry_at(delivery(0, created_at=now - window - 1), None) is None


async def _read(server, redis) -> list[Delivery]:
    ids = [i.decode() for i in redis.zrange(keys.WEBHOOKS_DUE, 0, -1)]
    client = async_client(server.url)
    try:
        return await outbox.read(client, ids)
    finally:
        await client.aclose()


def test_the_outbox_scripts_spell_no_key_and_only_known_fields():
    scripts = sorted(outbox.SCRIPTS.glob("*.lua"))
    assert [p.stem for p in scripts] == ["keep_body", "settle", "take"]
    for path in scripts:
        assert_spells_no_key(path, keys.JOB_FIELDS | keys.DELIVERY_FIELDS)
