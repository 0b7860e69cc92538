"""`GET /sdapi/v1/progress` from a key's current run and its jobs' records.

A1111 reports one global job: `progress` (0..1 over all its batches), `eta_relative` (seconds left, from
the time spent so far over the progress made), and `state` (`job_count` batches, `job_no` the current one,
its `sampling_step` of `sampling_steps`). Here a batch is a native job of the run: the first one not yet
ended is the current one; a run whose jobs are all still queued reports progress 0 and job "queued". With
no run, the answer is A1111's idle one (progress 0, job_count 0), which clients poll for before a model
switch (SillyTavern) or in `util_wait_for_ready` (webuiapi).
"""

from __future__ import annotations

import json
import time

from service.api.compat.a1111.state import Run
from service.jobs.states import TERMINAL, JobStatus


def _state(job: str = "", job_count: int = 0, job_no: int = 0, step: int = 0, steps: int = 0,
           timestamp: str = "0", interrupted: bool = False) -> dict:
    return {"skipped": False, "interrupted": interrupted, "stopping_generation": False, "job": job,
            "job_count": job_count, "job_timestamp": timestamp, "job_no": job_no, "sampling_step": step,
            "sampling_steps": steps}


def idle() -> dict:
    return {"progress": 0.0, "eta_relative": 0.0, "state": _state(), "current_image": None, "textinfo": None}


def current_image(preview: str | None) -> str | None:
    """A live preview (api.md, "Live previews": a `data:image/webp;base64,` URL of the current job's
    latents) as A1111's `current_image`: bare base64. None without one, as with A1111's previews off."""
    if not isinstance(preview, str) or not preview:
        return None
    return preview.split(",", 1)[1] if preview.startswith("data:") and "," in preview else preview


def current_job(run: Run, records: list[dict | None]) -> str | None:
    """The id of the run's job that runs now (the one whose live preview `current_image` shows), if any."""
    for job_id, h in zip(run.jobs, records):
        if h is not None and h["status"] == JobStatus.RUNNING:
            return job_id
    return None


def report(run: Run, records: list[dict | None], preview: str | None = None) -> dict:
    """The progress answer for `run`, whose jobs' records (None: gone) are in submit order; `preview`:
    the current job's latest live preview, if the client wants one."""
    count = max(run.count, len(records), 1)
    done = sum(1 for h in records if h is None or h["status"] in TERMINAL)
    current = next((h for h in records if h is not None and h["status"] not in TERMINAL), None)
    progress = json.loads(current["progress"]) if current is not None and current.get("progress") else {}
    if done == 0 and (current is None or current["status"] == JobStatus.QUEUED):  # nothing has started yet
        return {"progress": 0.0, "eta_relative": 0.0, "current_image": None, "textinfo": None,
                "state": _state("queued", count, 0, timestamp=run.timestamp, interrupted=run.interrupted)}
    job_no = records.index(current) if current is not None else min(done, count - 1)
    fraction = min(1.0, (done + float(progress.get("fraction") or 0.0)) / count)
    started = [float(h["started_at"]) for h in records if h is not None and h.get("started_at")]
    elapsed = time.time() - min(started) if started else 0.0
    eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
    return {"progress": fraction, "eta_relative": max(0.0, eta),
            "current_image": current_image(preview), "textinfo": None,
            "state": _state(f"Batch {job_no + 1} out of {count}", count, job_no, int(progress.get("step") or 0),
                            int(progress.get("total_steps") or 0), run.timestamp, run.interrupted)}
