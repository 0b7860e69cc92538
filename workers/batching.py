"""Dynamic batching (FRESCO_WORKER_BATCH_SIZE > 1): the job RQ hands over leads a batch, and the
worker takes compatible jobs still waiting on the same RQ queue (same task and model, the same LoRAs
and scales, and the pipeline's `batch_key`: size, steps, guidance, scheduler...) off the list itself, atomically
(protocol.claim), up to the batch size in images, waiting up to FRESCO_WORKER_BATCH_WAIT_MS for more
to arrive. They run in one pipeline call (workers/jobs.py); each keeps its own seed, progress,
result, timings and cancel.

Jobs taken this way are never seen by RQ's bookkeeping: their RQ job hashes are marked started by
this worker, and deleted when they end, as RQ deletes the hash of the job it ran (result_ttl=0). They
carry this worker's name like any running job, so the reaper fails or requeues them if it dies.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from service.jobs import inputs, protocol
from service.jobs.states import JobStatus
from workers import faults
from workers.pipelines.base import Output, TaskPipeline

PEEK_WINDOW = 64  # queue entries looked at for compatible jobs
POLL_S = 0.002  # how often the queue is looked at again while waiting for more jobs


@dataclass
class Member:
    """One job of a batch (a batch of one when batching is off)."""

    id: str
    params: dict
    created: float
    started: float
    claimed: bool = False  # taken off the queue by this worker, not handed over by RQ
    pixels: dict[str, Any] = field(default_factory=dict)  # its input images by path, decoded (in memory only)
    output: Output | None = None
    ended: bool = False
    status: JobStatus = JobStatus.RUNNING
    params_changed: bool = False  # the worker completed `params` (the LoRAs' digests): written when it ends
    timings: dict = field(default_factory=dict)
    watched: bool = False  # someone watches its live previews (as its last progress report said)
    previewed_at: int | None = None  # the denoising step of its last preview
    previewed_image: Any = None  # a training job's validation image last sent as its preview

    def run_params(self) -> dict:
        """The parameters the pipeline runs with: `params`, each input-image entry with its decoded image
        (`pixels`), in memory only (what is written back is `params`)."""
        return inputs.with_pixels(self.params, self.pixels)


def lora_key(params: dict) -> tuple:
    """Which adapters: LoRAs at which scales (one set is active in the model per call) and the API key's
    own embeddings, so jobs batch only with jobs of the same, whatever the task (the pipelines' `batch_key`
    says the rest). A trained adapter by its digest: two keys may each have one of the same name."""
    loras = tuple((e.get("digest") or e.get("name") or e.get("url"), e["scale"]) for e in params.get("loras") or ())
    return loras + tuple(e["digest"] for e in params.get("embeddings") or ())


class Batching:
    def __init__(self, redis, worker: str, size: int, wait_s: float, fault_injection: bool = False):
        self.redis, self.worker, self.size, self.wait_s = redis, worker, size, wait_s
        self.fault_injection = fault_injection

    def gather(self, task: str, model: str, pipeline: TaskPipeline, leader: Member, progress: dict) -> list[Member]:
        """Compatible jobs waiting on the leader's queue, taken off it and started with `progress`: up
        to the batch size in images, waiting up to the batch wait for more to arrive."""
        if self.size <= 1 or faults.requested(leader.params, self.fault_injection):
            return []
        key = pipeline.batch_key(leader.params)
        adapters = lora_key(leader.params)
        room = self.size - leader.params.get("num_images", 1)
        if key is None or room <= 0:
            return []
        deadline = time.monotonic() + self.wait_s
        taken: list[Member] = []
        while True:
            chosen, budget = [], room
            for job_id, params in protocol.peek(self.redis, task, model, PEEK_WINDOW):
                n = params.get("num_images", 1)
                if n <= budget and pipeline.batch_key(params) == key and lora_key(params) == adapters and \
                        not faults.requested(params, self.fault_injection):
                    chosen.append(job_id)
                    budget -= n
            if chosen:
                now = protocol.now()
                for job in protocol.claim(task, model, chosen, worker=self.worker, progress=progress,
                                          at=now).run(self.redis):
                    taken.append(Member(job.id, job.params, job.created, now, claimed=True))
                    room -= job.params.get("num_images", 1)
            remaining = deadline - time.monotonic()
            if room <= 0 or remaining <= 0:
                return taken
            time.sleep(min(POLL_S, remaining))
