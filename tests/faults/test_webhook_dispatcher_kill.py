"""A standalone webhook dispatcher (`fresco webhooks`) killed with kill -9 in the middle of a backlog, then
started again: every job's start and completed events still arrive (a delivery in flight at the kill
arrives twice, under the same webhook-id with the same body), none is lost, and the outbox empties."""

from __future__ import annotations

import signal
import time
from collections import defaultdict

from service.jobs import keys
from service.webhooks import signing
from tests.conftest import Stack, wait_status
from tests.webhook_receiver import Receiver, stack_env

SECRET = signing.new_secret()
JOBS = 8
# The receiver takes 1 s to answer: a backlog of deliveries in flight. An attempt times out after 3 s, so
# a killed dispatcher's leases end 8 s later (service/webhooks/dispatcher.py LEASE_MARGIN_S).
SLOW_S, TIMEOUT_S = 1.0, "3"


def test_a_killed_dispatcher_loses_no_delivery(own_redis, tmp_path):
    redis_proc = own_redis
    receiver = Receiver(SECRET)
    receiver.answer(200, delay=SLOW_S)
    env = stack_env(SECRET, FRESCO_WEBHOOK_DISPATCHER="false", FRESCO_WEBHOOK_TIMEOUT_S=TIMEOUT_S)
    s = Stack(redis_proc.url, tmp_path, env=env, profile=("tiny-turbo",))
    r = redis_proc.client()
    try:
        s.wait_serving("turbo")
        dispatcher = s.spawn("webhooks", "webhooks")
        with s.client() as c:
            ids = [c.post("/generate", json={"task": "turbo", "prompt": f"job {i}", "width": 256, "height": 256,
                                             "webhook": receiver.url, "webhook_events_filter": ["start", "completed"]}
                          ).json()["id"] for i in range(JOBS)]
            receiver.wait_for(lambda: receiver.received and receiver.in_flight, what="deliveries in flight")
            dispatcher.send_signal(signal.SIGKILL)
            dispatcher.wait()
            pending, killed_at = r.zcard(keys.WEBHOOKS_DUE), len(receiver.received)
            assert pending > 0, "nothing was pending at the kill: the test would prove nothing"
            for job_id in ids:
                assert wait_status(c, job_id, {"succeeded", "failed", "canceled"})["status"] == "succeeded"
            time.sleep(0.5)
            assert r.zcard(keys.WEBHOOKS_DUE) > 0  # owed, with nobody to deliver them
            s.spawn("webhooks-again", "webhooks")

            def all_completed():
                done = {x.data["id"] for x in receiver.received if x.type == "job.completed"}
                return done >= set(ids) and r.zcard(keys.WEBHOOKS_DUE) == 0

            receiver.wait_for(all_completed, timeout=60, what="every job's completed event")
            views = [c.get(f"/jobs/{job_id}").json()["webhook"] for job_id in ids]
        assert receiver.invalid == 0
        by_id = defaultdict(set)
        for x in receiver.received:
            by_id[x.id].add((x.data["id"], x.type, x.body))
        assert all(len(v) == 1 for v in by_id.values()), "a webhook-id came back with another event or body"
        events = {next(iter(v))[:2] for v in by_id.values()}
        assert events == {(job_id, t) for job_id in ids for t in ("job.start", "job.completed")}
        assert all(v["delivered"] for v in views), views
        # Those in flight at the kill reached the receiver, unanswered: sent again when their lease ended.
        assert len(receiver.received) > len(by_id)
        print(f"dispatcher kill -9 with {pending} deliveries pending ({killed_at} received by then): all "
              f"{len(by_id)} of {2 * JOBS} delivered once restarted, {len(receiver.received) - len(by_id)} "
              f"of them twice (same webhook-id)")
    finally:
        s.stop()
        receiver.stop()
