"""What the benches share: a throwaway Fresco deployment (embedded Redis, API and worker processes, all
real, in a temporary data dir), percentiles, process memory, and the tiny Turbo job they all time.

Every bench starts its own Redis and processes, so nothing it does touches `./.fresco` or a running
`make run`, and every figure it prints comes from one run of one script (the machines are noisy).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/x.py` as well as `python -m bench.x`
    sys.path.insert(0, str(ROOT))

from workers import tuning  # noqa: E402

tuning.tune_process()  # before torch: the benches time pipelines in-process as a worker process runs them

import httpx  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values, q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    data = sorted(values)
    if not data:
        return float("nan")
    k = (len(data) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def turbo_body(size: int = 512, steps: int = 1, seed: int = 7, prompt: str = "a red fox in the snow") -> dict:
    return {"task": "turbo", "prompt": prompt, "width": size, "height": size, "steps": steps, "seed": seed}


def turbo_params(size: int = 512, steps: int = 1, seed: int = 7, prompt: str = "a red fox in the snow") -> dict:
    """The parameters the API resolves `turbo_body(...)` to (what the worker's pipeline receives)."""
    return {"prompt": prompt, "width": size, "height": size, "steps": steps, "num_images": 1, "seed": seed,
            "guidance_scale": 0.0, "output_format": "png"}


class Deployment:
    """An embedded Redis (or `redis_url`), `api_processes` API processes and `workers` worker processes.

    `worker_env` and `api_env` add FRESCO_* settings; the workers serve `tasks` only (so they load only
    those models and start fast). Stop with `stop()` (or use it as a context manager)."""

    def __init__(self, *, workers: int = 1, api_processes: int = 1, tasks: str = "turbo",
                 redis_url: str | None = None, api_env: dict | None = None, worker_env: dict | None = None,
                 env: dict | None = None, log_level: str = "WARNING", keep: bool = False):
        self.data_dir = Path(tempfile.mkdtemp(prefix="fresco-bench-"))
        self.keep = keep
        self._embedded = None
        if redis_url is None:
            from service.redis import EmbeddedRedis

            self._embedded = EmbeddedRedis(self.data_dir / "redis")
            redis_url = self._embedded.url
        self.redis_url = redis_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "FRESCO_REDIS_URL": redis_url, "FRESCO_DATA_DIR": str(self.data_dir),
                    "FRESCO_PORT": str(self.port), "FRESCO_HOST": "127.0.0.1", "FRESCO_LOG_LEVEL": log_level,
                    "FRESCO_WORKER_TASKS": tasks, "FRESCO_WORKER_METRICS_PORT": "0", **(env or {})}
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.logs = self.data_dir / "logs"
        self.logs.mkdir()
        self.worker_names: list[str] = []
        self.worker_metrics_ports: list[int] = []
        self.api = self._spawn("api", ["api", "--processes", str(api_processes)], api_env or {})
        self.workers: list[subprocess.Popen] = []
        for _ in range(workers):
            self.spawn_worker(worker_env or {})

    def _spawn(self, name: str, argv: list[str], env: dict) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")
        return subprocess.Popen([sys.executable, "-m", "service.cli", *argv], env={**self.env, **env}, cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def spawn_worker(self, env: dict | None = None) -> subprocess.Popen:
        """Start one more worker process (its index is its place in `workers`)."""
        index = len(self.worker_names)
        name = f"bench-{self.port}-{index}"
        port = free_port()
        self.worker_names.append(name)
        self.worker_metrics_ports.append(port)
        proc = self._spawn(f"worker{index}", ["worker"], {"FRESCO_WORKER_NAME": name,
                                                          "FRESCO_WORKER_METRICS_PORT": str(port), **(env or {})})
        if hasattr(self, "workers"):
            self.workers.append(proc)
        return proc

    def stop_worker(self, index: int) -> None:
        p = self.workers[index]
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def wait_worker(self, index: int, timeout: float = 120) -> None:
        """Until worker `index` has loaded its models and published a heartbeat."""
        from service.jobs import keys

        r = self.redis()
        deadline = time.monotonic() + timeout
        while not r.exists(keys.worker(self.worker_names[index])):
            if self.workers[index].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {index} did not start:\n{self.read_logs()}")
            time.sleep(0.05)

    def redis(self):
        from service.redis import sync_client

        return sync_client(self.redis_url)

    def wait_ready(self, timeout: float = 120) -> "Deployment":
        """The API answers /healthz and every worker has published a heartbeat (models loaded)."""
        from service.jobs import keys

        r = self.redis()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in [self.api, *self.workers]:
                if p.poll() is not None:
                    raise RuntimeError(f"a process exited early:\n{self.read_logs()}")
            try:
                healthy = httpx.get(self.url + "/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                healthy = False
            if healthy and all(r.exists(keys.worker(n)) for n in self.worker_names):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"not ready after {timeout} s:\n{self.read_logs()}")

    def read_logs(self) -> str:
        return "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-3000:]}" for f in sorted(self.logs.glob("*")))

    def stop(self) -> None:
        procs = [*self.workers, self.api]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self._embedded:
            self._embedded.shutdown()
        if not self.keep:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class RawHttp:
    """A minimal blocking HTTP/1.1 keep-alive client over one socket, so a bench does not count an HTTP
    library's own cost (httpx adds about 0.5 ms a request here) as the service's."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 120):
        import socket

        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")

    def request(self, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        for k, v in (headers or {}).items():
            head += f"{k}: {v}\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.sock.sendall(head.encode() + b"\r\n" + body)
        status = int(self.file.readline().split()[1])
        length = 0
        while True:
            line = self.file.readline()
            if line in (b"\r\n", b""):
                break
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, self.file.read(length)

    def json(self, method: str, path: str, body: dict | None = None, headers: dict | None = None) -> dict:
        import json

        status, data = self.request(method, path, json.dumps(body).encode() if body is not None else b"", headers)
        return json.loads(data)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"
