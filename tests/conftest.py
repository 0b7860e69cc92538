"""Real parts only: a real Redis server the tests start (or FRESCO_TEST_REDIS_URL), real API and worker
processes, real diffusers pipelines with tiny random weights."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
# Each group of tests by topic gets its directory's marker (registered in pyproject.toml), so that
# `pytest -m "not (faults or deploy or bench)"` (`make test-fast`) runs the quick part.
MARKED_DIRECTORIES = ("e2e", "faults", "deploy", "bench")


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(item.fspath).relative_to(ROOT / "tests").parts
        if len(parts) > 1 and parts[0] in MARKED_DIRECTORIES:
            item.add_marker(getattr(pytest.mark, parts[0]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_data_url(width=320, height=256, color=(180, 40, 40), fmt="PNG") -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, fmt)
    mime = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}[fmt]
    return f"data:image/{mime};base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real Redis: the one FRESCO_TEST_REDIS_URL names, else an embedded server with AOF on."""
    url = os.environ.get("FRESCO_TEST_REDIS_URL")
    if url:
        yield url
        return
    from service.redis import EmbeddedRedis

    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    yield server.url
    server.close()


@pytest.fixture(scope="module")
def module_server(tmp_path_factory):
    """An embedded Redis of the test module's own: no stack, worker or reaper of another test sees its
    keys (the session's `redis_url` is shared with running stacks, whose reapers sweep every job)."""
    from service.redis import EmbeddedRedis

    server = EmbeddedRedis(tmp_path_factory.mktemp("module-redis"))
    yield server
    server.shutdown()


@pytest.fixture
def module_redis(module_server):
    """A sync client of the module's own Redis, emptied for each test."""
    from service.redis import sync_client

    r = sync_client(module_server.url)
    r.flushdb()
    yield r
    r.close()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fresco-data")


def wait_until_ok(url: str, processes: list[subprocess.Popen], timeout: float) -> str:
    """Poll `url` until it answers 200: "ok"; else why not ("a process exited early", "did not become
    ready"), as soon as one of `processes` exits or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in processes):
            return "had a process exit early"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return "ok"
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return "did not become ready"


class Stack:
    """A running API process and worker process(es) sharing one Redis and one data dir."""

    def __init__(self, redis_url: str, data_dir: Path, extra_env: dict | None = None, workers: int = 1):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.worker_metrics_ports = [free_port() for _ in range(workers)]
        self.env = {**os.environ, "FRESCO_REDIS_URL": redis_url, "FRESCO_DATA_DIR": str(data_dir),
                    "FRESCO_PORT": str(self.port), "FRESCO_HOST": "127.0.0.1", "FRESCO_LOG_LEVEL": "WARNING",
                    "FRESCO_TORCH_THREADS": "1", **(extra_env or {})}
        self.logs = data_dir / f"logs-{self.port}"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.others: list[subprocess.Popen] = []  # processes `spawn` started beside the API and workers
        self.api = self._spawn("api", "api", {})
        self.workers = [self.spawn_worker(i) for i in range(workers)]

    def spawn_worker(self, index: int | None = None) -> subprocess.Popen:
        """Start one more worker process (after a kill, say)."""
        index = len(self.worker_metrics_ports) if index is None else index
        if index >= len(self.worker_metrics_ports):
            self.worker_metrics_ports.append(free_port())
        proc = self._spawn(f"worker{index}", "worker", {
            "FRESCO_WORKER_METRICS_PORT": str(self.worker_metrics_ports[index]),
            "FRESCO_WORKER_NAME": f"test-{self.port}-{index}-{time.monotonic_ns()}"})
        if index < len(getattr(self, "workers", [])):
            self.workers[index] = proc
        elif hasattr(self, "workers"):
            self.workers.append(proc)
        return proc

    def spawn(self, name: str, command: str, env: dict | None = None) -> subprocess.Popen:
        """Start another `fresco <command>` process on the stack's settings (`webhooks`, say), stopped with it."""
        proc = self._spawn(name, command, env or {})
        self.others.append(proc)
        return proc

    def _spawn(self, name: str, command: str, env: dict) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")
        return subprocess.Popen([sys.executable, "-m", "service.cli", command], env={**self.env, **env},
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def wait_ready(self, timeout: float = 90, path: str = "/readyz") -> None:
        outcome = wait_until_ok(self.url + path, [self.api, *self.workers], timeout)
        if outcome != "ok":
            raise RuntimeError(f"the stack {outcome}; logs in {self.logs}:\n" + self.read_logs())

    def wait_serving(self, task: str, timeout: float = 90) -> "Stack":
        """Wait until a live worker serves `task` (workers serving only some tasks, FRESCO_WORKER_TASKS,
        never make /readyz answer 200)."""
        self.wait_ready(timeout, path="/healthz")
        deadline = time.time() + timeout
        while task in httpx.get(self.url + "/readyz", timeout=2).json().get("missing_tasks", [task]):
            if time.time() > deadline or any(p.poll() is not None for p in self.workers):
                raise RuntimeError(f"no worker serves {task}:\n" + self.read_logs())
            time.sleep(0.2)
        return self

    def read_logs(self) -> str:
        return "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-4000:]}" for f in self.logs.glob("*.log"))

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)

    def __enter__(self) -> "Stack":
        """`with Stack(...) as s:` waits until it is ready (or healthy, when it has no worker)."""
        self.wait_ready(path="/readyz" if self.workers else "/healthz")
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        for p in [*self.others, *self.workers, self.api]:
            if p.poll() is None:
                p.terminate()
        for p in [*self.others, *self.workers, self.api]:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="session")
def stack(redis_url, data_dir):
    with Stack(redis_url, data_dir) as s:
        yield s


@pytest.fixture
def client(stack):
    with stack.client() as c:
        yield c


@pytest.fixture(scope="session")
def app_settings(redis_url, tmp_path_factory):
    from service.settings import Settings

    return Settings(redis_url=redis_url, data_dir=tmp_path_factory.mktemp("api-data"), max_pixels=2048 * 2048,
                    max_image_bytes=2 * 1024 * 1024, max_body_bytes=4 * 1024 * 1024)


@pytest.fixture
def api(app_settings):
    """The API in-process (no worker): for validation and other API-only behaviour."""
    from fastapi.testclient import TestClient

    from service.api.app import create_app

    with TestClient(create_app(app_settings)) as c:
        yield c


def wait_status(client: httpx.Client, job_id: str, statuses: set[str], timeout: float = 60) -> dict:
    terminal = {"succeeded", "failed", "canceled"}
    deadline = time.time() + timeout
    while time.time() < deadline:
        # Long-poll for terminal states; poll briskly when waiting for `running`.
        wait = 1 if statuses <= terminal else 0
        job = client.get(f"/jobs/{job_id}", params={"wait": wait}).json()
        if job["status"] in statuses:
            return job
        if not wait:
            time.sleep(0.02)
    raise AssertionError(f"job {job_id} never reached {statuses}; last {job['status']}")
