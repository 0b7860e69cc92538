"""The worker's second stage: a finished inference's encode, store and end, while the next one runs.

The worker's main thread (RQ's loop) claims a job, decodes its inputs and runs the pipeline; then, when
another job is waiting, it hands the batch's tail (`finish`: encode, store, each job's end) to a
`Finisher` and runs that job at once (workers/jobs.py `JobRunner._run_chain`), so the device is not
idle while PNGs are encoded, files are written to a slow object store and the ends are published. (When
none is waiting, the main thread finishes the batch itself: a job alone is as fast as without this
stage.) Order of effects stays right: a job is `succeeded` only after its files are stored, by the same
call that stored them.

At most `pending` batches are held here, waiting or being finished (`FRESCO_WORKER_PENDING_OUTPUTS`): the
main thread waits for room (`wait_for_room`) before it takes the next job, so `submit` never waits and
at most `pending` + 1 batches' outputs are in memory. As many threads as `pending` finish them, each
call on one thread from start to end. With `pending` 0 there is no stage: the worker finishes each batch
itself before it takes the next job.

The jobs held here are `running` on this worker in Redis, and shown in its heartbeat (`holding`): a
worker killed with jobs in either stage has them all reaped (failed `worker_lost`, or requeued), as
any running job of a dead worker. A worker that stops (SIGTERM) finishes what it holds (`close`).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Callable

log = logging.getLogger("fresco.finishing")


class Finisher:
    def __init__(self, pending: int):
        self.pending = pending
        self._work: deque[tuple[int, Callable[[], None]]] = deque()
        self._held: dict[int, list[str]] = {}  # the job ids of each call held (waiting or running)
        self._calls = 0
        self._changed = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._closing = False

    def holding(self) -> list[str]:
        """The ids of the jobs held here, oldest first."""
        with self._changed:
            return [job for jobs in self._held.values() for job in jobs]

    def wait_for_room(self) -> None:
        """Return once fewer than `pending` batches are held."""
        with self._changed:
            self._changed.wait_for(lambda: len(self._held) < self.pending)

    def submit(self, jobs: list[str], finish: Callable[[], None]) -> None:
        """Finish `jobs` by calling `finish` (which ends each of them, however it goes) on a finishing
        thread. The caller made room first (`wait_for_room`)."""
        with self._changed:
            self._calls += 1
            self._held[self._calls] = list(jobs)
            self._work.append((self._calls, finish))
            if len(self._threads) < self.pending:
                thread = threading.Thread(target=self._loop, name=f"fresco-finish-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
            self._changed.notify_all()

    def _loop(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._work or self._closing)
                if not self._work:
                    return
                call, finish = self._work.popleft()
            try:
                finish()
            except BaseException:  # `finish` ends its jobs itself; this is only the last net
                log.exception("finishing jobs %s failed", self._held[call])
            finally:
                with self._changed:
                    del self._held[call]
                    self._changed.notify_all()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted has been finished (but the call of the thread asking, when
        a finishing thread asks); False if `timeout` passed first."""
        own = 1 if threading.current_thread() in self._threads else 0
        with self._changed:
            return self._changed.wait_for(lambda: len(self._held) <= own, timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Finish what is held, then stop the threads."""
        drained = self.drain(timeout)
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        return drained
