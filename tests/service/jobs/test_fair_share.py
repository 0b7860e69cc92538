"""Fair share, priorities and the per-key caps, as the queue scripts hold them (service/jobs/scripts/lib/fair.lua):
the order `pick` takes jobs in, `queue_position`, and the counts every transition keeps."""

from __future__ import annotations

import uuid

import pytest

from service.jobs import keys, protocol
from service.jobs.protocol import Enqueued, Share
from service.jobs.states import JobStatus

TASK, MODEL = "turbo", "m"
QUEUES = [(TASK, MODEL)]


@pytest.fixture
def redis(module_redis):
    return module_redis


def submit(redis, owner: str, *, priority: str = "normal", share: Share = Share(), model: str = MODEL,
           retries: int = 0) -> str | Enqueued:
    job_id = str(uuid.uuid4())
    outcome = protocol.submit(job_id, TASK, model, {"prompt": owner}, owner=owner, retries=retries, timeout_s=60,
                              cap=0, priority=priority, share=share).run(redis)
    return job_id if outcome else outcome


def owner_of(redis, job_id: str) -> str:
    return redis.hget(keys.job(job_id), "owner").decode()


def take(redis, queues=QUEUES) -> str | None:
    picked = protocol.pick(queues).run(redis)
    return None if picked is None else picked[1]


def start(redis, job_id: str) -> bool:
    return protocol.start(job_id, TASK, worker="w1", progress={}, at=protocol.now()).run(redis)


def end(redis, job_id: str) -> bool:
    return protocol.end(job_id, TASK, JobStatus.SUCCEEDED, ttl=600, progress={}).run(redis)


def run_one(redis, queues=QUEUES) -> str | None:
    """Take, start and end the next job; its owner."""
    job_id = take(redis, queues)
    if job_id is None:
        return None
    assert start(redis, job_id) and end(redis, job_id)
    return owner_of(redis, job_id)


def position(redis, job_id: str) -> int:
    return int(protocol.view(job_id).run(redis)["_queue_position"])


def counts(redis) -> tuple[dict, dict]:
    q, r = (protocol.decode_hash(redis.hgetall(k)) for k in (keys.FAIR_QUEUED, keys.FAIR_RUNNING))
    return q, r


def test_a_key_that_floods_delays_another_keys_job_by_one_turn(redis):
    flood = [submit(redis, "flood") for _ in range(20)]
    light = [submit(redis, "light"), submit(redis, "light")]
    # Both keys' first jobs share the first turn (either may go first), then turns alternate.
    assert {position(redis, flood[0]), position(redis, light[0])} == {0, 1}
    assert {position(redis, flood[1]), position(redis, light[1])} == {2, 3}
    first = [run_one(redis) for _ in range(5)]
    assert sorted(first[:2]) == sorted(first[2:4]) == ["flood", "light"] and first[4] == "flood"
    assert position(redis, flood[-1]) == 16  # the rest of the flood, in order
    while run_one(redis):
        pass
    assert counts(redis) == ({}, {})  # every job ended: no count left behind


def test_each_keys_jobs_run_in_the_order_they_came(redis):
    a = [submit(redis, "a") for _ in range(3)]
    b = [submit(redis, "b") for _ in range(3)]
    order = [take(redis) for _ in range(6)]
    assert [j for j in order if j in a] == a and [j for j in order if j in b] == b


def test_weights_share_the_workers_in_proportion(redis):
    for _ in range(12):
        submit(redis, "heavy", share=Share(weight=2))
        submit(redis, "light")
    first = [run_one(redis) for _ in range(9)]
    assert first.count("heavy") == 6 and first.count("light") == 3


def test_an_idle_key_banks_no_credit(redis):
    for _ in range(3):
        run_one(redis) if submit(redis, "a") else None  # a runs alone for a while
    b = [submit(redis, "b") for _ in range(4)]
    a = [submit(redis, "a") for _ in range(4)]
    order = [owner_of(redis, take(redis)) for _ in range(8)]
    assert all(sorted(order[i:i + 2]) == ["a", "b"] for i in range(0, 8, 2))  # turns from now on, not a's back pay
    assert b and a


def test_first_come_first_served_when_fair_share_is_off(redis):
    fifo = Share(fair=False)
    flood = [submit(redis, "flood", share=fifo) for _ in range(5)]
    light = submit(redis, "light", share=fifo)
    assert position(redis, light) == 5
    assert [take(redis) for _ in range(6)] == [*flood, light]


def test_higher_classes_go_first_and_fair_share_holds_within_a_class(redis):
    low = submit(redis, "a", priority="low")
    normal = [submit(redis, "a") for _ in range(3)]
    high = [submit(redis, "a", priority="high"), submit(redis, "b", priority="high")]
    assert {position(redis, h) for h in high} == {0, 1}
    assert position(redis, normal[0]) == 2 and position(redis, low) == 5
    order = [take(redis) for _ in range(6)]
    assert set(order[:2]) == set(high) and order[2:] == [*normal, low]


def test_a_worker_takes_the_highest_class_across_its_queues(redis):
    other = (TASK, "m2")
    normal = submit(redis, "a")
    high = submit(redis, "a", priority="high", model="m2")
    assert take(redis, [QUEUES[0], other]) == high
    assert take(redis, [QUEUES[0], other]) == normal


def test_max_running_holds_across_workers_and_lets_other_keys_pass(redis):
    capped = Share(max_running=1)
    a1, a2 = submit(redis, "a", share=capped), submit(redis, "a", share=capped)
    assert take(redis) == a1  # taken: counted as running before it starts
    b1 = submit(redis, "b")
    assert take(redis) == b1  # a is at its max_running: b goes
    assert take(redis) is None  # a2 waits, though a worker is free
    assert position(redis, a2) == 0
    assert start(redis, a1) and end(redis, a1)
    assert take(redis) == a2
    # Batching and the next-job path (claim) hold the cap too.
    a3, a4 = submit(redis, "a", share=capped), submit(redis, "a", share=capped)
    claimed = protocol.claim(TASK, MODEL, [a3, a4], worker="w2", progress={}, at=protocol.now()).run(redis)
    assert claimed == []  # a2 still runs
    assert start(redis, a2) and end(redis, a2)
    claimed = protocol.claim(TASK, MODEL, [a3, a4], worker="w2", progress={}, at=protocol.now()).run(redis)
    assert [c.id for c in claimed] == [a3]
    assert counts(redis)[1] == {"a": "1", "b": "1"}


def test_max_queued_refuses_and_writes_nothing_then_lets_in_once_jobs_start(redis):
    capped = Share(max_queued=2)
    first = submit(redis, "a", share=capped)
    submit(redis, "a", share=capped)
    assert submit(redis, "a", share=capped) is Enqueued.OWNER_FULL
    assert redis.llen(keys.rq_queue(TASK, MODEL)) == 2
    assert submit(redis, "b", share=capped)  # another key's count
    assert protocol.claim(TASK, MODEL, [first], worker="w1", progress={}, at=protocol.now()).run(redis)
    assert submit(redis, "a", share=capped)


def test_cancel_takes_a_queued_job_out_of_its_turn_and_frees_its_counts(redis):
    a1, a2 = submit(redis, "a", share=Share(max_running=1)), submit(redis, "a", share=Share(max_running=1))
    assert protocol.cancel(a1, TASK, MODEL, ttl=60).run(redis) is protocol.CancelOutcome.CANCELED
    assert position(redis, a2) == 0
    assert take(redis) == a2
    assert submit(redis, "b")
    # A job a worker took and has not started yet is canceled too, and no longer counts as running.
    assert protocol.cancel(a2, TASK, MODEL, ttl=60).run(redis) is protocol.CancelOutcome.CANCELED
    assert not start(redis, a2)
    assert counts(redis) == ({"b": "1"}, {})


def test_a_requeued_job_keeps_its_turn(redis):
    a1 = submit(redis, "a", retries=1)
    others = [submit(redis, "a") for _ in range(3)]
    assert take(redis) == a1 and start(redis, a1)
    assert protocol.reap(a1, TASK, MODEL, worker="w1", ttl=60, at=protocol.now()).run(redis) is JobStatus.QUEUED
    assert position(redis, a1) == 0
    assert take(redis) == a1 and others
    assert counts(redis) == ({"a": "4"}, {"a": "1"})  # taken again: queued until its worker starts it


def test_a_job_taken_by_a_worker_that_died_goes_back_after_the_grace(redis):
    job = submit(redis, "a", share=Share(max_running=1))
    at = protocol.now()
    assert protocol.pick(QUEUES, at=at).run(redis) == (0, job)
    assert not protocol.restore(job, TASK, MODEL, at=at + 5).run(redis)  # within the grace: the worker may start it
    assert take(redis) is None
    assert protocol.restore(job, TASK, MODEL, at=at + 11).run(redis)
    assert counts(redis) == ({"a": "1"}, {})
    assert redis.llen(keys.rq_queue(TASK, MODEL)) == 1
    assert take(redis) == job and start(redis, job)


def test_rq_lists_keep_every_queued_job_in_arrival_order(redis):
    jobs = [submit(redis, "flood") for _ in range(3)] + [submit(redis, "light")]
    assert [i.decode() for i in redis.lrange(keys.rq_queue(TASK, MODEL), 0, -1)] == jobs
    taken = take(redis)
    assert [i.decode() for i in redis.lrange(keys.rq_queue(TASK, MODEL), 0, -1)] == [j for j in jobs if j != taken]


def test_peek_shows_jobs_in_the_order_workers_take_them(redis):
    flood = [submit(redis, "flood") for _ in range(3)]
    light = submit(redis, "light", priority="high")
    assert [j for j, _ in protocol.peek(redis, TASK, MODEL, 3)] == [light, flood[0], flood[1]]
