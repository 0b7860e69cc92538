"""Each row of the reliability table, with real processes: a real worker killed with kill -9, a real
Redis stopped and killed, SIGTERM mid-job, a real full filesystem. Faults that need a GPU (out of
memory, a sticky CUDA error) are raised through the worker's fault hook, on only under test settings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import ROOT, Stack, free_port, wait_status, wait_until_ok
from tests.faults.redis_server import RedisProcess
from tests.stack import tiny_models_file

DONE = {"succeeded", "failed", "canceled"}
FAST = {
    "FRESCO_HEARTBEAT_INTERVAL_S": "0.5",
    "FRESCO_HEARTBEAT_TTL_S": "3",
    "FRESCO_REAPER_INTERVAL_S": "0.5",
    "FRESCO_FAULT_INJECTION": "true",
    "FRESCO_JOB_TIMEOUT_S": json.dumps({"sdxl": 600, "turbo": 3, "img2img": 600, "svd": 600}),
}
SMALL = {"width": 256, "height": 256}
PROFILE = ("tiny-turbo", "tiny-sdxl")  # what the fault tests' jobs run on: the workers load nothing else


def turbo(prompt="x", **extra):
    return {"task": "turbo", "prompt": prompt, **SMALL, **extra}


def slow_job(seconds=40):
    """A job of `seconds` steps of one second each (the `slow` fault): long, but idle on the CPU."""
    return {"task": "sdxl", "prompt": "fresco-fault:slow", **SMALL, "steps": seconds, "refiner": False}


@pytest.fixture(scope="module")
def redis_proc(tmp_path_factory):
    server = RedisProcess(tmp_path_factory.mktemp("fault-redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fstack(redis_proc, tmp_path_factory):
    with Stack(redis_proc.url, tmp_path_factory.mktemp("fault-data"), env=FAST, profile=PROFILE) as s:
        yield s


@pytest.fixture
def fclient(fstack):
    # A dead worker from an earlier test gets a successor.
    for i, proc in enumerate(fstack.workers):
        if proc.poll() is not None:
            fstack.spawn_worker(i)
    fstack.wait_ready()
    with fstack.client() as c:
        yield c


def test_worker_kill9_mid_job_fails_worker_lost_within_30s(fstack, fclient):
    """A job mid-inference, and the job before it on the finishing stage (its files being stored while
    the next one runs): both are the dead worker's, and the reaper ends both, `failed` with worker_lost."""
    # behind a 1-second job, so that both wait when the worker looks for its next job
    blocker = fclient.post("/generate", json=turbo("fresco-fault:slow", steps=1)).json()
    stored = fclient.post("/generate", json=turbo("fresco-fault:slow-store")).json()
    job = fclient.post("/generate", json=slow_job(100)).json()
    assert wait_status(fclient, blocker["id"], DONE)["status"] == "succeeded"
    deadline = time.monotonic() + 30
    while True:
        views = [fclient.get(f"/jobs/{j['id']}").json() for j in (stored, job)]
        if views[0]["progress"]["stage"] == "store" and views[1]["status"] == "running":
            break
        assert time.monotonic() < deadline and not DONE & {v["status"] for v in views}, views
        time.sleep(0.05)
    assert views[1]["progress"]["stage"] == "base"  # SDXL's first denoising stage: inference, not storing
    fstack.workers[0].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    ended = wait_status(fclient, job["id"], DONE, timeout=40)
    took = time.monotonic() - killed
    assert ended["status"] == "failed" and ended["error"]["code"] == "worker_lost", ended
    assert took < 30
    print(f"kill -9 -> failed/worker_lost in {took:.1f}s")
    ended = wait_status(fclient, stored["id"], DONE, timeout=30)
    assert ended["status"] == "failed" and ended["error"]["code"] == "worker_lost", ended


def test_worker_kill9_with_retry_runs_again_on_a_new_worker(fstack, fclient):
    job = fclient.post("/generate", json={**slow_job(3), "retries": 1}).json()
    assert wait_status(fclient, job["id"], {"running"} | DONE)["status"] == "running"
    fstack.workers[0].send_signal(signal.SIGKILL)
    fstack.workers[0].wait()
    requeued = wait_status(fclient, job["id"], {"queued"} | DONE, timeout=30)
    assert requeued["status"] == "queued"
    fstack.spawn_worker(0)
    ended = wait_status(fclient, job["id"], DONE, timeout=60)
    assert ended["status"] == "succeeded", ended


def test_no_job_stays_running_without_a_live_worker(fstack, fclient, redis_proc):
    # A job marked running on a worker that never existed (a crash before any heartbeat).
    r = redis_proc.client()
    job = fclient.post("/generate", json=slow_job(100)).json()
    assert wait_status(fclient, job["id"], {"running"} | DONE)["status"] == "running"
    r.hset(f"fresco:job:{job['id']}", "worker", "ghost-worker")
    ended = wait_status(fclient, job["id"], DONE, timeout=20)
    assert ended["error"]["code"] == "worker_lost"
    fclient.delete(f"/jobs/{job['id']}")


def test_job_lost_between_pop_and_start_is_put_back(fstack, fclient, redis_proc):
    r = redis_proc.client()
    # The worker stopped inside a job, so it takes nothing meanwhile: a worker stopped while it waits in
    # BLPOP would still be handed the next job by Redis.
    busy = fclient.post("/generate", json=slow_job(100)).json()
    assert wait_status(fclient, busy["id"], {"running"} | DONE)["status"] == "running"
    fstack.workers[0].send_signal(signal.SIGSTOP)
    try:
        job = fclient.post("/generate", json=turbo()).json()
        queue = "rq:queue:fresco-turbo-tiny-turbo"
        assert r.lrem(queue, 0, job["id"]) == 1  # what a worker dying right after BLPOP leaves behind
        r.zadd("fresco:jobs:turbo:queued", {job["id"]: time.time() - 60})  # as if queued a while ago
        deadline = time.time() + 10
        while r.lpos(queue, job["id"]) is None:
            assert time.time() < deadline, "the reaper never put the job back"
            time.sleep(0.1)
    finally:
        fstack.workers[0].send_signal(signal.SIGCONT)
    fclient.delete(f"/jobs/{busy['id']}")  # (reaped meanwhile, its worker's heartbeat having lapsed: a 409)
    assert wait_status(fclient, job["id"], DONE)["status"] == "succeeded"


def test_timeout_fails_the_job_and_the_worker_goes_on(fstack, fclient):
    pid = fstack.workers[0].pid
    job = fclient.post("/generate", json=turbo("fresco-fault:slow", steps=4)).json()
    ended = wait_status(fclient, job["id"], DONE, timeout=30)
    assert ended["status"] == "failed" and ended["error"]["code"] == "timeout", ended
    after = fclient.post("/generate", json=turbo(), headers={"Prefer": "wait=30"}).json()
    assert after["status"] == "succeeded" and fstack.workers[0].pid == pid and fstack.workers[0].poll() is None


def test_jobs_the_worker_takes_itself_each_get_their_own_timeout(fstack, fclient):
    """The worker takes waiting jobs off the queue itself while the last one is stored (workers/jobs.py,
    `_run_chain`): each gets its task's timeout (3 s here) from its own start, not what is left of the first's."""
    pid = fstack.workers[0].pid
    jobs = [fclient.post("/generate", json=turbo("fresco-fault:slow", steps=steps)).json() for steps in (2, 2, 4)]
    ends = [wait_status(fclient, j["id"], DONE, timeout=40) for j in jobs]
    assert [e["status"] for e in ends] == ["succeeded", "succeeded", "failed"], ends
    assert ends[2]["error"]["code"] == "timeout"
    assert fstack.workers[0].pid == pid and fstack.workers[0].poll() is None


def test_gpu_oom_fails_the_job_and_the_same_worker_serves_the_next(fstack, fclient):
    pid = fstack.workers[0].pid
    job = fclient.post("/generate", json=turbo("fresco-fault:oom"), headers={"Prefer": "wait=30"}).json()
    assert job["status"] == "failed" and job["error"]["code"] == "gpu_oom", job
    after = fclient.post("/generate", json=turbo(), headers={"Prefer": "wait=30"}).json()
    assert after["status"] == "succeeded"
    assert fstack.workers[0].poll() is None and fstack.workers[0].pid == pid
    metrics = httpx.get(f"http://127.0.0.1:{fstack.worker_metrics_ports[0]}/metrics").text
    assert 'fresco_gpu_oom_total{task="turbo"} 1.0' in metrics


def test_sticky_cuda_error_exits_the_worker_for_a_restart(fstack, fclient):
    job = fclient.post("/generate", json=turbo("fresco-fault:sticky"), headers={"Prefer": "wait=30"}).json()
    assert job["status"] == "failed" and job["error"]["code"] == "internal"
    assert "restarts" in job["error"]["message"]
    assert fstack.workers[0].wait(20) == 3  # the supervisor (fresco up, Kubernetes) starts a new one


def test_sigterm_to_a_busy_worker_finishes_the_job_takes_no_new_one_exits_0(fstack, fclient):
    first = fclient.post("/generate", json=slow_job(4)).json()
    assert wait_status(fclient, first["id"], {"running"} | DONE)["status"] == "running"
    fstack.workers[0].send_signal(signal.SIGTERM)
    second = fclient.post("/generate", json=turbo()).json()
    assert fstack.workers[0].wait(60) == 0
    assert fclient.get(f"/jobs/{first['id']}").json()["status"] == "succeeded"
    assert fclient.get(f"/jobs/{second['id']}").json()["status"] == "queued"
    fstack.spawn_worker(0)
    assert wait_status(fclient, second["id"], DONE)["status"] == "succeeded"


def test_api_drains_in_flight_requests_on_sigterm(fstack, fclient, redis_proc, tmp_path):
    """A second API on the fault stack's Redis, whose worker runs the job the request waits on."""
    s = Stack(redis_proc.url, tmp_path, env=FAST, workers=0, profile=PROFILE)
    try:
        s.wait_ready()
        result = {}

        def waiting_request():
            with s.client() as c:
                result["r"] = c.post("/generate", json=slow_job(3), headers={"Prefer": "wait=20"})

        t = threading.Thread(target=waiting_request)
        t.start()
        time.sleep(1.0)  # the request is in flight, waiting on its job
        s.api.send_signal(signal.SIGTERM)
        t.join(40)
        assert result["r"].status_code in (200, 202)  # answered, not dropped
        # uvicorn re-raises SIGTERM once it has drained, so the exit is by that signal.
        assert s.api.wait(40) in (0, -signal.SIGTERM)
    finally:
        s.stop()


def test_redis_outage_503_then_recovery_without_restart(fstack, fclient, redis_proc):
    job = fclient.post("/generate", json=turbo(), headers={"Prefer": "wait=30"}).json()
    pids = (fstack.api.pid, fstack.workers[0].pid)
    slow = fclient.post("/generate", json=slow_job(12)).json()
    events = []
    reader = threading.Thread(target=lambda: events.extend(_sse_events(fstack.url, slow["id"])))
    reader.start()
    time.sleep(1.0)
    redis_proc.stop()
    try:
        reader.join(20)
        assert events and events[-1][0] == "error", events  # the stream says why it ends
        assert events[-1][1]["error"]["code"] == "unavailable"
        r = fclient.post("/generate", json=turbo())
        assert r.status_code == 503 and "retry-after" in r.headers, r.text
        assert r.json()["error"]["code"] == "unavailable"
        r = fclient.get(f"/jobs/{job['id']}")
        assert r.status_code == 503 and "retry-after" in r.headers
        assert fclient.get(f"/jobs/{job['id']}", params={"wait": 2}).status_code == 503
        assert fclient.get("/healthz").status_code == 200
        assert fclient.get("/readyz").status_code == 503
        assert fclient.get("/metrics").status_code == 200
    finally:
        redis_proc.start()
    fstack.wait_ready(timeout=60)
    assert (fstack.api.pid, fstack.workers[0].pid) == pids and fstack.workers[0].poll() is None
    after = fclient.post("/generate", json=turbo(), headers={"Prefer": "wait=30"})
    assert after.status_code == 200 and after.json()["status"] == "succeeded"
    assert fclient.get(f"/jobs/{job['id']}").json()["status"] == "succeeded"  # kept through the outage (AOF)
    # The job running through the outage ends too: its worker kept going and wrote the outcome once
    # Redis was back, instead of leaving it `running` for the reaper's stuck-job timeout.
    assert wait_status(fclient, slow["id"], DONE, timeout=60)["status"] == "succeeded"


def test_redis_kill9_loses_no_queued_job(own_redis, tmp_path):
    redis_proc = own_redis
    s = Stack(redis_proc.url, tmp_path, env={**FAST, "FRESCO_QUEUE_CAP": '{"turbo": 0}'}, workers=0)
    try:
        s.wait_ready(path="/healthz")
        with s.client() as c:
            ids = [c.post("/generate", json=turbo(model="tiny-turbo")).json()["id"] for _ in range(100)]
        time.sleep(1.5)  # appendfsync everysec
        redis_proc.kill9()
        redis_proc.start()
        r = redis_proc.client()
        assert all(r.hget(f"fresco:job:{i}", "status") == b"queued" for i in ids)
        listed = set(x.decode() for x in r.lrange("rq:queue:fresco-turbo-tiny-turbo", 0, -1))
        assert set(ids) <= listed
        assert all(r.exists(f"rq:job:{i}") for i in ids)
        print("Redis kill -9 with AOF: 100 of 100 queued jobs kept")
    finally:
        s.stop()


def test_queue_cap_holds_exactly_under_concurrent_submits(own_redis, tmp_path):
    redis_proc = own_redis
    cap = 20
    s = Stack(redis_proc.url, tmp_path, env={**FAST, "FRESCO_QUEUE_CAP": json.dumps({"img2img": cap})},
              workers=0)
    r = redis_proc.client()
    try:
        s.wait_ready(path="/healthz")
        from tests.conftest import png_data_url

        body = {"task": "img2img", "prompt": "x", "image": png_data_url(64, 64), "model": "tiny-turbo",
                "steps": 2}
        with s.client() as c, ThreadPoolExecutor(16) as pool:
            replies = list(pool.map(lambda _: c.post("/generate", json=body), range(60)))
        statuses = [x.status_code for x in replies]
        assert statuses.count(202) == cap and statuses.count(503) == 60 - cap, statuses
        assert all("retry-after" in x.headers for x in replies if x.status_code == 503)
        assert r.zcard("fresco:jobs:img2img:queued") == cap
        print(f"queue cap {cap}: {statuses.count(202)} accepted, {statuses.count(503)} refused with 503")
    finally:
        s.stop()


def test_idempotency_key_50_at_once_make_one_job(fstack, fclient):
    body = turbo("idempotent", seed=3)
    key = f"k-{time.monotonic_ns()}"
    with ThreadPoolExecutor(25) as pool:
        replies = list(pool.map(lambda _: fclient.post("/generate", json=body, headers={"Idempotency-Key": key}),
                                range(50)))
    ok = [x for x in replies if x.status_code in (200, 202)]
    assert {x.json()["id"] for x in ok} and len({x.json()["id"] for x in ok}) == 1
    assert all(x.status_code in (200, 202, 409) for x in replies), [
        (x.status_code, x.text[:200]) for x in replies if x.status_code not in (200, 202, 409)]
    job_id = ok[0].json()["id"]
    # The same key with the same body later: the same job; with another body: 422.
    again = fclient.post("/generate", json=body, headers={"Idempotency-Key": key})
    assert again.status_code == 202 and again.json()["id"] == job_id
    other = fclient.post("/generate", json=turbo("different"), headers={"Idempotency-Key": key})
    assert other.status_code == 422 and other.json()["error"]["fields"][0]["field"] == "Idempotency-Key"
    print(f"idempotency: 50 concurrent -> {len(ok)} answers with one job, "
          f"{sum(x.status_code == 409 for x in replies)} x 409")


@pytest.fixture
def tiny_fs(tmp_path):
    mount = tmp_path / "full"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("mounting a tmpfs needs root: " + r.stderr.decode(errors="replace").strip())
    yield mount
    subprocess.run(["umount", "-l", str(mount)])


def test_full_disk_fails_the_job_with_a_reason_and_leaves_no_partial_file(own_redis, tmp_path, tiny_fs):
    # A job takes seconds on a loaded CPU: this test is about the disk, not FAST's 3 s turbo timeout.
    env = {**FAST, "FRESCO_RESULTS_DIR": str(tiny_fs), "FRESCO_JOB_TIMEOUT_S": json.dumps({"turbo": 120})}
    s = Stack(own_redis.url, tmp_path, env=env, profile=("tiny-turbo",))
    try:
        s.wait_ready(path="/healthz")
        deadline = time.time() + 60
        with s.client() as c:
            while not any("turbo/tiny-turbo" in w for w in _served(c)):
                assert time.time() < deadline
                time.sleep(0.2)
            # Noise compresses badly: a 512² PNG (~680 KiB) is far larger than the 256 KiB filesystem.
            job = c.post("/generate", json={"task": "turbo", "prompt": "x", "width": 512, "height": 512},
                         headers={"Prefer": "wait=60"}).json()
        assert job["status"] == "failed" and "No space left" in job["error"]["message"], job
        leftovers = [p.name for p in tiny_fs.rglob("*") if p.is_file()]
        assert leftovers == [], leftovers
    finally:
        s.stop()


def _sse_events(base: str, job_id: str) -> list[tuple[str, dict]]:
    out, name = [], None
    with httpx.stream("GET", f"{base}/jobs/{job_id}/events", timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                out.append((name, json.loads(line[5:])))
    return out


def _served(client) -> list[str]:
    body = client.get("/models").json()
    return [f"{t}/{m['name']}" for t, info in body["tasks"].items() for m in info["models"] if m["loaded"]]


def test_fresco_up_restarts_a_dead_worker_and_stops_everything(tmp_path):
    port = free_port()
    env = {**os.environ, "FRESCO_DATA_DIR": str(tmp_path), "FRESCO_PORT": str(port),
           "FRESCO_WORKER_METRICS_PORT": str(free_port()), "FRESCO_HEARTBEAT_TTL_S": "3",
           "FRESCO_HEARTBEAT_INTERVAL_S": "0.5", "FRESCO_TORCH_THREADS": "1",
           "FRESCO_MODELS_FILE": str(tiny_models_file(tmp_path / "models.yaml", ("tiny-turbo",)))}
    up = subprocess.Popen([sys.executable, "-m", "service.cli", "up", "--grace", "10"], env=env, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        assert wait_until_ok(base + "/readyz", [up], 60) == "ok"
        print(f"fresco up -> ready in {time.monotonic() - started:.1f}s")
        worker = _child(up.pid, b"worker")
        os.kill(worker, signal.SIGKILL)
        deadline = time.time() + 60
        while (_child(up.pid, b"worker") in (None, worker)
               or httpx.get(base + "/readyz", timeout=2).status_code != 200):
            assert time.time() < deadline, "the worker was not restarted"
            time.sleep(0.2)
        r = httpx.post(base + "/generate", json=turbo(), headers={"Prefer": "wait=30"}, timeout=40)
        assert r.json()["status"] == "succeeded"
        children = [_child(up.pid, b"worker"), _child(up.pid, b" api")]
    finally:
        up.send_signal(signal.SIGTERM)
        out = up.communicate(timeout=60)[0].decode(errors="replace")
    assert up.returncode == 0, out
    assert "restarting" in out
    for pid in children:
        assert not os.path.exists(f"/proc/{pid}") or b"zombie" in open(f"/proc/{pid}/status", "rb").read().lower()


def _child(parent: int, marker: bytes) -> int | None:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid == parent and marker in open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" "):
                return int(entry)
        except (OSError, ValueError):
            continue
    return None
