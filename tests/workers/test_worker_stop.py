"""A worker asked to stop leaves promptly: RQ's teardown joined redis-py's command listener thread without a
limit, and that thread, once unsubscribed, waits for a new subscription for RQ's whole 60 s `sleep_time`
(seen in the suite: a worker SIGTERMed mid-job, its job done, still in its teardown a minute later)."""

from __future__ import annotations

import time

from workers.fair_queue import FairQueue
from workers.worker import UNSUBSCRIBE_WAIT_S, FrescoWorker


def test_unsubscribing_never_waits_out_the_listeners_sleep(module_redis):
    worker = FrescoWorker([FairQueue.of("turbo", "m", connection=module_redis)], connection=module_redis,
                          name="stopping-worker")
    worker.subscribe()
    time.sleep(0.3)
    worker.pubsub.unsubscribe()  # the listener now waits for a subscription (60 s under RQ's own stop)
    time.sleep(0.3)
    started = time.monotonic()
    worker.unsubscribe()
    assert time.monotonic() - started < UNSUBSCRIBE_WAIT_S + 1
