"""How a worker takes its next job: under fair share and priorities (service/jobs/scripts/pick.lua), not
the head of RQ's list.

RQ's worker loop asks its queue class for the next job (`dequeue_any`); `FairQueue` answers with the
job `protocol.pick` takes atomically in Redis: the highest priority class first, across the worker's
queues in its order; within a class, the API keys in turn (weighted), each key's jobs in order, skipping
a key at its `max_running`. RQ's list keeps every queued job in the order it came, for `rq info`. An
idle worker waits on its queues' wake lists (a token per submit, requeue and restore), and looks again
every WAIT_S in any case: a key under its `max_running` again wakes no one.
"""

from __future__ import annotations

import time

from rq import Queue
from rq.exceptions import DequeueTimeout

from service.jobs import keys, protocol

WAIT_S = 0.5  # the longest an idle worker waits before it looks at its queues again


class FairQueue(Queue):
    """One task and model's RQ queue, dequeued fairly. RQ itself builds queues of this class by name
    (a job's origin); those are never dequeued from."""

    def __init__(self, name: str = "default", *args, task: str = "", model: str = "", **kwargs):
        super().__init__(keys.queue_name(task, model) if task else name, *args, **kwargs)
        self.task, self.model = task, model

    @classmethod
    def of(cls, task: str, model: str, **kwargs) -> "FairQueue":
        return cls(task=task, model=model, **kwargs)

    @classmethod
    def dequeue_any(cls, queues, timeout, connection, job_class=None, serializer=None, death_penalty_class=None):
        """The next job of `queues` and its queue. `timeout`: None, look once (None when there is none);
        0, wait for one; else wait at most this many seconds, then DequeueTimeout (RQ's contract)."""
        queues = list(queues)
        pairs = [(q.task, q.model) for q in queues]
        wake = [keys.fair_wake(task, model) for task, model in pairs]
        deadline = None if not timeout else time.monotonic() + timeout
        while True:
            picked = protocol.pick(pairs).run(connection)
            if picked is not None:
                index, job_id = picked
                job = queues[index].fetch_job(job_id)
                if job is None:  # its RQ hash is gone (the job expired meanwhile)
                    continue
                return job, queues[index]
            if timeout is None:
                return None
            wait = WAIT_S if deadline is None else min(WAIT_S, deadline - time.monotonic())
            if wait <= 0:
                raise DequeueTimeout(timeout, [q.key for q in queues])
            connection.blpop(wake, timeout=wait)
