"""Webhook deliveries are fair across API keys (service/webhooks/outbox.py `look`, scripts/take.lua): a key
holds at most FRESCO_WEBHOOK_MAX_IN_FLIGHT_PER_KEY deliveries in flight over every dispatcher, a lease
that runs out gives its slot back, other keys' due deliveries are taken past a key at its cap, keys take
turns; and so one key's slow receiver does not delay another key's deliveries. Real parts throughout:
the module's own Redis, jobs moved by the real transitions, real HTTP receivers."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry

from service.jobs import keys
from service.redis import async_client
from service.webhooks import outbox
from service.webhooks.dispatcher import Dispatcher
from service.webhooks.metrics import WebhookMetrics
from tests.service.webhooks.test_dispatcher import SECRET, job, pending, settings_for
from tests.webhook_receiver import Receiver

LEASE_S = 30.0


@pytest.fixture
def redis(module_redis):
    return module_redis


@pytest.fixture
def receivers():
    """One receiver per API key: "a"'s, "b"'s."""
    rxs = {"a": Receiver(SECRET), "b": Receiver(SECRET)}
    yield rxs
    for rx in rxs.values():
        rx.stop()


def owe(redis, owner: str | None, count: int, *, at: float, url: str = "https://example.com/hook") -> list[str]:
    """`count` jobs of `owner`, each owing one delivery due at `at`: their delivery ids, in due order."""
    before = set(redis.zrange(keys.WEBHOOKS_DUE, 0, -1))
    for i in range(count):
        job(redis, url, owner=owner, at=at + i * 0.001)
    return [i.decode() for i in redis.zrange(keys.WEBHOOKS_DUE, 0, -1) if i not in before]


def on(server, step):
    """`await step(client)` with an async client of `server`'s, as a dispatcher runs it: its result."""
    async def main():
        client = async_client(server.url)
        try:
            return await step(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def take(server, now: float, room: int, cap: int) -> tuple[list[str], int]:
    """One dispatcher's look and take at time `now`: the ids taken, and how many keys it found at their cap."""
    async def step(client):
        found = await outbox.look(client, now, room, cap, {})
        return await outbox.take(now, now + LEASE_S, room, cap, found.candidates).arun(client), found.capped

    return on(server, step)


def settle(server, delivery_id: str) -> None:
    async def step(client):
        [delivery] = await outbox.read(client, [delivery_id])
        assert await outbox.settle(delivery, retry_at=None, delivered=True, status=200).arun(client)

    on(server, step)


def held(server, now: float) -> dict[str, int]:
    return on(server, lambda client: outbox.held(client, now))


def test_a_key_holds_at_most_its_cap_over_every_dispatcher_and_a_lease_run_out_gives_it_back(module_server, redis):
    t = time.time()
    a = owe(redis, "a", 6, at=t - 10)
    b = owe(redis, "b", 2, at=t - 5)
    assert {redis.hget(keys.webhook_delivery(i), "owner") for i in a + b} == {b"a", b"b"}
    first, _ = take(module_server, t, room=5, cap=3)
    assert first == [a[0], b[0], a[1], b[1], a[2]]  # in turns, each key's earliest first
    assert take(module_server, t, room=10, cap=3) == ([], 1)  # another dispatcher: "a" is at its cap
    settle(module_server, a[0])  # a slot of "a" is free again
    assert take(module_server, t, room=10, cap=3) == ([a[3]], 1)
    # Every lease runs out (their dispatchers died): their slots come back with them; "a" takes 3 again.
    later = t + LEASE_S + 1
    again, _ = take(module_server, later, room=10, cap=3)
    # "a"'s never taken first (due since the start), then one whose lease ran out; and "b"'s two.
    assert len(again) == 5 and {a[4], a[5], b[0], b[1]} < set(again) and set(again) < set(a + b)
    assert take(module_server, later, room=10, cap=3) == ([], 1)
    assert held(module_server, later) == {"a": 3, "b": 2} and pending(redis) == 7
    settle(module_server, b[0])
    assert held(module_server, later) == {"a": 3, "b": 1}
    assert redis.hlen(keys.WEBHOOKS_LEASED) == 6  # and 2 of "a"'s run out, till they are taken or settled


def test_a_key_at_its_cap_does_not_hold_back_the_keys_due_behind_it(module_server, redis, monkeypatch):
    monkeypatch.setattr(outbox, "SCAN_PAGE", 4)  # "b"'s deliveries are pages behind "a"'s
    t = time.time()
    a = owe(redis, "a", 14, at=t - 10)
    b = owe(redis, "b", 2, at=t - 5)
    taken, capped = take(module_server, t, room=10, cap=2)
    assert taken == [a[0], b[0], a[1], b[1]] and capped == 1
    monkeypatch.setattr(outbox, "SCAN_LIMIT", 8)  # a look reads this far, no further
    c = owe(redis, "c", 1, at=t - 1)
    assert take(module_server, t, room=10, cap=2) == ([], 1)  # "c"'s is past 12 of "a"'s
    assert take(module_server, t, room=10, cap=3) == ([a[2]], 1)
    assert c[0] in {i.decode() for i in redis.zrangebyscore(keys.WEBHOOKS_DUE, "-inf", t)}  # still owed


def test_keys_take_turns_even_without_a_cap_and_no_keys_means_no_cap(module_server, redis):
    t = time.time()
    a = owe(redis, "a", 4, at=t - 10)
    b = owe(redis, "b", 4, at=t - 5)
    assert take(module_server, t, room=4, cap=0)[0] == [a[0], b[0], a[1], b[1]]
    redis.flushdb()
    anyone = owe(redis, None, 5, at=t - 10)  # API keys off: the key ''
    assert redis.hget(keys.webhook_delivery(anyone[0]), "owner") == b""
    assert take(module_server, t, room=10, cap=2) == (anyone, 0)


class Dispatchers:
    """`count` dispatchers, each running its own loop as in an API process, counting into one registry."""

    def __init__(self, server, count: int = 1, **overrides):
        self.server, self.count = server, count
        self.settings = settings_for(server, **overrides)
        self.registry = CollectorRegistry()
        self.metrics = WebhookMetrics(self.registry)

    def sample(self, name: str) -> float | None:
        return self.registry.get_sample_value(name)

    def run(self, until, timeout: float = 10.0, *, watch=lambda: None) -> float:
        """Run until `until()` (calling `watch()` meanwhile, every 10 ms): when it held (`time.monotonic()`)."""
        async def main():
            clients = [async_client(self.server.url) for _ in range(self.count)]
            dispatchers = [Dispatcher(c, self.settings, self.metrics) for c in clients]
            started = time.monotonic()
            for d in dispatchers:
                d.start()
            try:
                while not until():
                    assert time.monotonic() - started < timeout, "never got there"
                    watch()
                    await asyncio.sleep(0.01)
                return time.monotonic()
            finally:
                for d in dispatchers:
                    await d.stop()
                for c in clients:
                    await c.aclose()

        return asyncio.run(main())


@pytest.mark.parametrize("per_key", [2, 0])
def test_a_key_with_a_slow_receiver_does_not_delay_another_keys_deliveries(module_server, redis, receivers, per_key):
    slow = 1.5  # "a"'s receiver answers after this long (its timeout: 2 s)
    receivers["a"].answer(200, delay=slow)
    owe(redis, "a", 8, at=time.time(), url=receivers["a"].url)  # more than the dispatcher's 4 slots
    owed_b = []

    def watch():  # "b"'s jobs end once "a"'s deliveries are being attempted
        if not owed_b and receivers["a"].in_flight:
            owe(redis, "b", 3, at=time.time(), url=receivers["b"].url)
            owed_b.append(time.monotonic())

    run = Dispatchers(module_server, webhook_max_in_flight=4, webhook_max_in_flight_per_key=per_key,
                      webhook_timeout_s=2.0)
    waited = run.run(lambda: len(receivers["b"].received) == 3, watch=watch) - owed_b[0]
    if per_key:
        assert waited < 0.8, f"b's deliveries waited {waited:.2f} s behind a's slow receiver"
        assert run.sample("fresco_webhook_keys_at_cap") == 1  # "a" waits at its cap
    else:  # the effect shown: without a per-key cap, "a" holds every slot until its receiver answers
        assert waited >= 1.0
    assert run.sample("fresco_webhook_attempts_in_flight") == 0  # after stop: none left here


def test_the_per_key_cap_holds_over_two_dispatchers(module_server, redis, receivers):
    receivers["a"].answer(200, delay=0.4)
    owe(redis, "a", 9, at=time.time() - 1, url=receivers["a"].url)
    most = [0]

    def watch():
        most[0] = max(most[0], receivers["a"].in_flight)

    run = Dispatchers(module_server, 2, webhook_max_in_flight=4, webhook_max_in_flight_per_key=3, webhook_timeout_s=2.0)
    run.run(lambda: len(receivers["a"].received) == 9, watch=watch)
    assert most[0] == 3  # 8 slots in all, 3 of them for "a"
    assert pending(redis) == 0 and not redis.exists(keys.WEBHOOKS_LEASED)
