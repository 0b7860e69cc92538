"""A training job whose worker is killed (SIGKILL) mid-training goes back to the queue (a training job has
two retries) and resumes on the next worker from its last checkpoint: its progress says `resumed_from`,
no step before that checkpoint is trained again, and the adapter is registered once it succeeds."""

from __future__ import annotations

import signal
import time

from tests.conftest import png_data_url, wait_status
from tests.stack import Stack

DONE = {"succeeded", "failed", "canceled"}
# A lost worker is noticed within seconds; each training step takes 0.15 s more: long enough to kill the
# worker between checkpoints. (Not among the fault tests, which run one after another: this one's stack
# and Redis are its own.)
SLOW_STEPS = {"FRESCO_HEARTBEAT_INTERVAL_S": "0.5", "FRESCO_HEARTBEAT_TTL_S": "3", "FRESCO_REAPER_INTERVAL_S": "0.5",
              "FRESCO_STEP_DELAY_S": "0.15"}


def test_a_killed_training_job_resumes_from_its_checkpoint(tmp_path):
    body = {"model": "tiny-sd", "name": "resumed", "steps": 24, "checkpoint_every": 8, "resolution": 256,
            "rank": 4, "seed": 7, "images": [png_data_url(96, 96), png_data_url(96, 96, (20, 200, 20))]}
    with Stack(None, tmp_path, env=SLOW_STEPS, profile=("tiny-sd",), tasks="train") as s, s.client() as c:
        job = c.post("/train", json=body).json()
        running = wait_status(c, job["id"], {"running"} | DONE, 60)
        while running["status"] == "running" and running["progress"]["step"] < 10:
            time.sleep(0.05)
            running = c.get(f"/jobs/{job['id']}").json()
        assert running["status"] == "running" and running["progress"]["step"] < 16, running
        s.workers[0].send_signal(signal.SIGKILL)
        s.workers[0].wait()
        assert (s.data_dir / "results" / job["id"] / "checkpoint.pt").is_file()  # step 8's, kept to resume from
        assert wait_status(c, job["id"], {"queued"} | DONE, 30)["status"] == "queued"
        s.spawn_worker(0)
        steps = []
        view = wait_status(c, job["id"], {"running"} | DONE, 60)
        while view["status"] == "running":
            if view["progress"]["stage"] == "training":
                steps.append(view["progress"]["step"])
            time.sleep(0.05)
            view = c.get(f"/jobs/{job['id']}").json()
        assert view["status"] == "succeeded", view
        assert view["progress"]["resumed_from"] == 8
        assert steps and min(steps) > 8, steps  # nothing before the checkpoint trained again
        assert [a["name"] for a in c.get("/adapters").json()["adapters"]] == ["resumed"]
        assert not (s.data_dir / "results" / job["id"] / "checkpoint.pt").exists()
