"""The worker's finishing stage (workers/finishing.py) and the images it reads (workers/pipelines/host_images.py):
job N is encoded and stored while job N+1, which the worker took off the queue itself, runs; a job
succeeds only once its files are stored; at most `worker_pending_outputs` batches are held; a stop
request ends the chain of jobs. In-process on a real Redis with the tiny Turbo pipeline; a worker
killed while it stores one job and runs the next: tests/faults/test_faults.py."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from diffusers.image_processor import VaeImageProcessor

from service.catalog import tiny_catalog
from service.jobs import keys
from service.storage import LocalStorage
from tests.workers.harness import job, make_runner, pop_and_run, submit, turbo
from workers import metrics
from workers.finishing import Finisher
from workers.pipelines.host_images import host_images

TASK, MODEL = "turbo", "tiny-turbo"
STORE_S = 0.4  # each job's files take this long to store here: longer than a tiny job's inference


# ---- the images, off the device


def test_host_images_are_the_pixels_diffusers_pil_output_gives():
    decoded = torch.rand(3, 3, 24, 40, generator=torch.Generator().manual_seed(0))
    decoded[0, 0, 0, :16] = (torch.arange(16) + 0.5) / 255  # ties, which both round half to even
    expected = VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(decoded))
    images = host_images(decoded)
    assert len(images) == 3
    assert all(np.array_equal(np.asarray(e), np.asarray(g)) for e, g in zip(expected, images))
    share = images[1:]  # one job's share of a batch
    assert len(share) == 2 and np.array_equal(np.asarray(share[1]), np.asarray(expected[2]))
    assert (images[0].width, images[0].height, images[0].mode) == (40, 24, "RGB")


def test_a_pipeline_gives_the_image_diffusers_gives(runner_plain):
    """Turbo's own call (tensors out, made PIL on the finishing thread) against diffusers' PIL output."""
    from workers.progress import Progress

    pipeline = runner_plain.runtime.pipeline(TASK, MODEL)
    params = turbo(11, size=128)
    with torch.inference_mode():
        ours = pipeline.run(params, Progress(lambda state: False, pipeline.plan(params))).images[0]
        theirs = pipeline.model.pipe(prompt=params["prompt"], width=128, height=128, num_inference_steps=1,
                                     guidance_scale=0.0, generator=torch.Generator().manual_seed(11)).images[0]
    assert np.array_equal(np.asarray(ours), np.asarray(theirs))


# ---- the stage


def test_submit_returns_at_once_and_room_is_made_only_when_a_batch_ends():
    finisher = Finisher(2)
    gates = {name: threading.Event() for name in "ab"}
    finisher.submit(["a1", "a2"], gates["a"].wait)
    finisher.submit(["b"], gates["b"].wait)
    assert finisher.holding() == ["a1", "a2", "b"]
    room = threading.Thread(target=finisher.wait_for_room)
    room.start()
    room.join(0.3)
    assert room.is_alive()  # two held: the next job waits
    gates["b"].set()
    room.join(5)
    assert not room.is_alive() and finisher.holding() == ["a1", "a2"]
    assert not finisher.drain(0.1)
    gates["a"].set()
    assert finisher.close(5) and finisher.holding() == []


def test_a_finish_that_raises_frees_its_room_and_the_stage_goes_on():
    finisher, done = Finisher(1), threading.Event()
    finisher.submit(["bad"], lambda: 1 / 0)
    finisher.wait_for_room()
    finisher.submit(["good"], done.set)
    assert done.wait(5) and finisher.drain(5)


# ---- in the worker


class SlowStorage(LocalStorage):
    """Local files, each job's write STORE_S slower (an object store's latency), noting for each job when
    its files were stored and what the worker held at that moment."""

    def __init__(self, root):
        super().__init__(root)
        self.runner = None
        self.stored_at: dict[str, float] = {}
        self.held: list[list[str]] = []  # what the finishing stage held at each store
        self.shown: dict[str, list[str]] = {}  # what the worker's heartbeat showed while each job was stored

    def put(self, job_id, name, data):
        if name.startswith("0."):
            time.sleep(STORE_S)
            self.held.append(list(self.runner.finisher.holding()))
            self.shown[job_id] = list(self.runner.current_jobs)
        super().put(job_id, name, data)
        self.stored_at[job_id] = time.time()


@pytest.fixture(scope="module")
def runner_plain(module_server, tmp_path_factory):
    return make_runner(module_server.url, tmp_path_factory.mktemp("finish-plain"), "finish-plain", tiny_catalog())


@pytest.fixture
def runner(module_server, module_redis, tmp_path):
    """A worker's runner with the finishing stage on (2 pending outputs) and slow storage."""
    r = make_runner(module_server.url, tmp_path, "finish-test", tiny_catalog(), worker_pending_outputs=2)
    r.storage = SlowStorage(tmp_path / "slow")
    r.storage.runner = r
    module_redis.delete(keys.rq_queue(TASK, MODEL))
    yield r
    r.finisher.close(30)


def test_the_next_job_runs_while_the_last_is_stored_and_each_succeeds_only_once_stored(runner, module_redis):
    redis = module_redis
    ids = [submit(redis, TASK, MODEL, turbo(20 + i)) for i in range(5)]
    busy_before = metrics.BUSY_SECONDS._value.get()
    # RQ hands over the first; the runner takes the other four itself while the first is stored
    assert pop_and_run(runner, redis, TASK, MODEL) == {"status": "succeeded"}
    jobs = [job(redis, i) for i in ids]
    assert [j["status"] for j in jobs] == ["succeeded"] * 5
    assert redis.llen(keys.rq_queue(TASK, MODEL)) == 0
    assert not any(redis.exists(keys.rq_job(i)) for i in ids[1:])  # the hashes of the jobs it took, gone
    for j in jobs:  # succeeded only once stored, by the call that stored them
        assert float(j["finished_at"]) >= runner.storage.stored_at[j["id"]] - 0.001
    overlapped = [a for a, b in zip(jobs, jobs[1:]) if float(b["started_at"]) < float(a["finished_at"])]
    assert len(overlapped) >= 3, [(j["started_at"], j["finished_at"]) for j in jobs]
    # memory bounded: never more than 2 batches held, and each job shows in the worker's heartbeat meanwhile
    assert max(len(held) for held in runner.storage.held) <= 2
    assert all(i in runner.storage.shown[i] for i in ids)
    assert not any(ids[-1] in held for held in runner.storage.held)  # none waited: the worker stored it itself
    inference = sum(j["timings"]["inference_s"] for j in jobs)
    assert metrics.BUSY_SECONDS._value.get() - busy_before == pytest.approx(inference, abs=0.01)


def test_a_stop_request_ends_the_chain_after_the_job_in_hand(runner, module_redis):
    redis = module_redis
    ids = [submit(redis, TASK, MODEL, turbo(40 + i)) for i in range(3)]
    runner.stopping.set()
    assert pop_and_run(runner, redis, TASK, MODEL) == {"status": "succeeded"}
    assert [job(redis, i)["status"] for i in ids] == ["succeeded", "queued", "queued"]
    runner.stopping.clear()
    assert pop_and_run(runner, redis, TASK, MODEL) == {"status": "succeeded"}
    assert [job(redis, i)["status"] for i in ids] == ["succeeded"] * 3


def test_a_canceled_job_in_the_queue_is_passed_over(runner, module_redis):
    from service.jobs import protocol

    redis = module_redis
    ids = [submit(redis, TASK, MODEL, turbo(50 + i)) for i in range(3)]
    protocol.cancel(ids[1], TASK, MODEL, ttl=60).run(redis)
    assert pop_and_run(runner, redis, TASK, MODEL) == {"status": "succeeded"}
    assert [job(redis, i)["status"] for i in ids] == ["succeeded", "canceled", "succeeded"]


def test_batches_the_worker_takes_itself_batch_too(runner, module_redis):
    """Dynamic batching with the finishing stage: the leader RQ hands over takes 3 along, then the
    worker takes the next 4 as one batch itself while the first batch is stored."""
    redis = module_redis
    runner.batching.size = 4
    ids = [submit(redis, TASK, MODEL, turbo(60 + i)) for i in range(8)]
    assert pop_and_run(runner, redis, TASK, MODEL) == {"status": "succeeded"}
    jobs = [job(redis, i) for i in ids]
    assert [j["status"] for j in jobs] == ["succeeded"] * 8
    # a batch's leader starts, then takes the others along at once
    assert len({j["started_at"] for j in jobs[1:4]}) == 1 and len({j["started_at"] for j in jobs[5:]}) == 1
    assert float(jobs[4]["started_at"]) < float(jobs[0]["finished_at"])  # run while the first batch was stored
