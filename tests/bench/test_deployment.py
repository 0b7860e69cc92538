"""One real deployment (embedded Redis, an API of two processes, a worker process started later):

1. a burst of Turbo jobs queued before the worker starts runs as one batch in the worker process, each
   image the one the same job gives alone, and RQ keeps no job behind;
2. the overhead bench runs against it;
3. /metrics, whichever of the two API processes answers it, counts every request and job of both
   (prometheus_client's multiprocess mode, set up by `fresco api --processes 2`)."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from bench import overhead
from bench.common import Deployment
from service.jobs import keys
from tests.workers.harness import same_pixels


def value(text: str, name: str, **labels) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def pixels(client: httpx.Client, job: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(client.get(job["result"]["images"][0]["url"]).content)), dtype=np.int16)


def test_batching_overhead_and_metrics_in_a_real_deployment(tmp_path, capsys):
    metrics_dir = tmp_path / "metrics"
    with Deployment(workers=0, api_processes=2, api_env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}) as dep, \
            httpx.Client(base_url=dep.url, timeout=60) as client:
        dep.wait_ready()
        # 1. a burst, batched by a real worker process
        bodies = [{"task": "turbo", "prompt": f"burst {i}", "seed": 900 + i, "width": 256, "height": 256}
                  for i in range(4)]
        ids = [client.post("/generate", json=b).json()["id"] for b in bodies]
        dep.spawn_worker(env={"FRESCO_WORKER_BATCH_SIZE": "8"})
        dep.wait_worker(0)
        batched = [client.get(f"/jobs/{i}", params={"wait": 60}).json() for i in ids]
        assert [j["status"] for j in batched] == ["succeeded"] * 4
        assert len({j["started_at"] for j in batched[1:]}) == 1  # the three others taken with the first
        alone = [client.post("/generate", json=b, headers={"Prefer": "wait=60"}).json() for b in bodies]
        for x, y in zip(batched, alone):
            assert same_pixels(pixels(client, x), pixels(client, y))
        worker_metrics = httpx.get(f"http://127.0.0.1:{dep.worker_metrics_ports[0]}/metrics").text
        assert value(worker_metrics, "fresco_batch_images_sum", task="turbo") == 8  # one call of 4, four of 1
        assert value(worker_metrics, "fresco_batch_images_count", task="turbo") == 5
        calls = [batched[0], *alone]  # the seconds its pipeline calls ran: the batch's one call, then four
        assert value(worker_metrics, "fresco_worker_busy_seconds_total") == pytest.approx(
            sum(j["timings"]["inference_s"] for j in calls), abs=0.01)
        r = dep.redis()
        assert r.keys(keys.rq_job("*")) == [] and r.llen(keys.rq_queue("turbo", "tiny-turbo")) == 0
        # 2. the overhead bench
        result = overhead.measure(jobs=2, size=256, steps=1, mode="longpoll", warmup=1, dep=dep)
        assert result["jobs"] == 2 and result["in_process_p50_ms"] > 0 and result["e2e_p50_ms"] > 0
        assert set(result["phases_p50_ms"]) >= {"queue pick-up", "encode", "store", "done -> client"}
        assert "added (pairwise difference)" in capsys.readouterr().out
        # 3. metrics over both API processes
        posts, reads = 4 + 4 + 3, 4 + 3  # the burst, alone, the bench's (one warm-up, two timed)
        for _ in range(30):  # a new connection each time: the kernel hands them to either process
            with httpx.Client(base_url=dep.url) as fresh:
                assert fresh.post("/generate", json=bodies[0]).status_code == 202
            posts += 1
        pids = {p.name.rsplit("_", 1)[-1] for p in metrics_dir.glob("counter_*.db")}
        assert len(pids) == 2, pids  # both processes served requests
        for _ in range(6):
            with httpx.Client(base_url=dep.url) as fresh:
                text = fresh.get("/metrics").text
            assert value(text, "fresco_jobs_submitted_total", task="turbo") == posts
            assert value(text, "fresco_http_requests_total", handler="/generate", status="202",
                         method="POST") == 4 + 3 + 30
            assert value(text, "fresco_http_requests_total", handler="/generate", status="200", method="POST") == 4
            assert value(text, "fresco_http_request_duration_seconds_count", handler="/generate") == posts
            assert value(text, "fresco_http_requests_total", handler="/jobs/{job_id}", method="GET") == reads
            assert value(text, "fresco_redis_up") == 1 and value(text, "fresco_workers_live", task="turbo") == 1
