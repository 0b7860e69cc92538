"""The one launcher of throwaway Fresco deployments, for the tests and the benches (bench/common.py): real
`fresco api` and `fresco worker` processes sharing one Redis (an embedded one of its own, AOF on, when
none is given) and one data directory (a temporary one, removed at the end, when none is given).

A stack starts only what its user needs: `profile` cuts the tiny profile to the models named (a models
file of just those, with the adapters and ControlNets that fit them), so each worker loads only the
models it will run (loading is most of a worker's start-up) and the API's `/readyz` still means "every
task is served"; `tasks` (FRESCO_WORKER_TASKS) restricts the workers instead; `workers=0` is an API
alone. Every process logs to a file of its own under the data directory; `read_logs()` shows them when
something does not start. A process that does not stop within STOP_GRACE_S of its SIGTERM is made to print
its threads' stacks to its log (SIGABRT, with Python's faulthandler on), then killed; `stop()` warns with
that log's end, saying which process held the stop up and where.

Workers are forked from one fork server per test process (tests/forkserver.py), which has done a worker's
imports once: about 5 s of CPU less per worker start, and the suite starts some fifty.
`FRESCO_TEST_FORK_WORKERS=false` in the environment starts them the plain way, each its own interpreter.
"""

from __future__ import annotations

import atexit
import functools
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
STOP_GRACE_S = 10  # from SIGTERM to a stack's stop: ~2 s idle, 5 on a loaded host; more means a hang
TRUE = ("1", "true", "yes", "on")


@functools.cache
def fork_server():
    """The fork server this process's stacks fork their workers from, started at the first forked worker;
    None where it could not start."""
    from tests.forkserver import ForkServer, Unavailable

    _no_core()  # before the server starts: what it forks inherits the limit
    try:
        server = ForkServer(dict(os.environ))
    except Unavailable as exc:
        warnings.warn(f"workers start the plain way: {exc}", stacklevel=2)
        return None
    atexit.register(server.close)
    return server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        time.sleep(0.05)
    return "did not become ready"


def tiny_models_file(path: Path, names) -> Path:
    """A models file of the tiny profile's models `names` (their own entries and defaults), with the
    profile's adapters and ControlNets that fit one of them."""
    import yaml

    from service.catalog import tiny_catalog

    tiny = tiny_catalog()
    unknown = set(names) - set(tiny.models)
    if unknown:
        raise ValueError(f"the tiny profile has no models {sorted(unknown)}")
    models = [tiny.models[n] for n in names]

    def entry(spec) -> dict:
        return spec.model_dump(exclude={"name"}, exclude_defaults=True)

    def fitting(section: dict) -> dict:
        return {name: entry(spec) for name, spec in section.items() if any(spec.fits(m) for m in models)}

    data = {"models": {m.name: entry(m) for m in models},
            "defaults": {task: name for task, name in tiny.defaults.items() if name in names},
            "adapters": fitting(tiny.adapters), "controlnets": fitting(tiny.controlnets)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Stack:
    """API process(es) and worker process(es) sharing one Redis and one data directory.

    `env` adds FRESCO_* settings to every process, `api_env` and `worker_env` to the API's and the
    workers'; `profile` the tiny models they know, `tasks` (comma-separated) the ones workers serve;
    `fork_workers` False: each worker its own interpreter, as deployed (the benches' figures). Use it as
    a context manager, or call `stop()`."""

    def __init__(self, redis_url: str | None = None, data_dir: Path | None = None, env: dict | None = None,
                 workers: int = 1, *, profile: tuple[str, ...] = (), tasks: str | None = None,
                 api_processes: int = 1,
                 api_env: dict | None = None, worker_env: dict | None = None, log_level: str = "WARNING",
                 torch_threads: int = 1, keep: bool = False, fork_workers: bool = True):
        self.temporary = data_dir is None and not keep
        self.data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="fresco-stack-"))
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
                    "FRESCO_TORCH_THREADS": str(torch_threads), "PYTHONFAULTHANDLER": "1", **(env or {})}
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # an API's own, when it runs several processes
        if profile:
            self.env["FRESCO_MODELS_FILE"] = str(tiny_models_file(self.data_dir / "models.yaml", profile))
        if tasks is not None:
            self.env["FRESCO_WORKER_TASKS"] = tasks
        # Workers serving only some tasks or models never make /readyz answer 200: wait for them instead.
        self.partial = any(name in {**self.env, **(worker_env or {})}
                           for name in ("FRESCO_WORKER_TASKS", "FRESCO_WORKER_MODELS"))
        self.worker_env = dict(worker_env or {})
        self.fork_workers = fork_workers and os.environ.get("FRESCO_TEST_FORK_WORKERS", "true").lower() in TRUE
        self.logs = self.data_dir / f"logs-{self.port}"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.worker_names: list[str] = []
        self.worker_metrics_ports: list[int] = []
        self.others: list[subprocess.Popen] = []  # processes `spawn` started beside the API and workers
        self.workers: list[subprocess.Popen] = []
        self.api = self._spawn("api", ["api", "--processes", str(api_processes)], api_env or {})
        for _ in range(workers):
            self.spawn_worker()

    # ---- processes

    def _spawn(self, name: str, argv: list[str], env: dict, fork: bool = False) -> subprocess.Popen:
        """`fresco <argv>` on the stack's settings and `env`; `fork`: from the fork server, where there is one."""
        env = {**self.env, **env}
        log = self.logs / f"{name}.log"
        server = fork_server() if fork else None
        if server is not None:
            from tests.forkserver import Unavailable

            try:
                proc = server.spawn(argv, env, cwd=ROOT, log=log, session=True)
                proc.log = str(log)
                return proc
            except Unavailable:
                pass
        with open(log, "ab") as out:
            _no_core()
            proc = subprocess.Popen([sys.executable, "-m", "service.cli", *argv], env=env, cwd=ROOT,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        proc.log = str(log)
        return proc

    def spawn_worker(self, index: int | None = None, env: dict | None = None) -> subprocess.Popen:
        """Start a worker: a new one (`index` None), or one in place of worker `index` (after a kill, say),
        with `env` added to its settings."""
        new = index is None or index >= len(self.workers)
        index = len(self.workers) if index is None else index
        if new:
            self.worker_metrics_ports.append(free_port())
            self.worker_names.append("")
        self.worker_names[index] = f"stack-{self.port}-{index}-{time.monotonic_ns()}"
        proc = self._spawn(f"worker{index}", ["worker"], {
            **self.worker_env, "FRESCO_WORKER_METRICS_PORT": str(self.worker_metrics_ports[index]),
            "FRESCO_WORKER_NAME": self.worker_names[index], **(env or {})}, fork=self.fork_workers)
        if new:
            self.workers.append(proc)
        else:
            self.workers[index] = proc
        return proc

    def spawn(self, name: str, command: str, env: dict | None = None) -> subprocess.Popen:
        """Start another `fresco <command>` process on the stack's settings (`webhooks`, say), stopped with it."""
        proc = self._spawn(name, [command], env or {})
        self.others.append(proc)
        return proc

    def stop_worker(self, index: int) -> None:
        """SIGTERM worker `index` and wait for it (a busy one finishes its job first)."""
        _terminate([self.workers[index]], 30)

    # ---- readiness

    def wait_ready(self, timeout: float = 90, path: str | None = None) -> "Stack":
        """Until the API answers `path`; by default /readyz, or, for an API alone or workers serving only some
        tasks or models, /healthz and every worker's heartbeat."""
        whole = path is None and self.workers and not self.partial
        outcome = wait_until_ok(self.url + (path or ("/readyz" if whole else "/healthz")), [self.api, *self.workers],
                                timeout)
        if outcome != "ok":
            raise RuntimeError(f"the stack {outcome}; logs in {self.logs}:\n" + self.read_logs())
        if path is None and not whole:
            for index in range(len(self.workers)):
                self.wait_worker(index, timeout)
        return self

    def wait_worker(self, index: int, timeout: float = 120) -> "Stack":
        """Until worker `index` has loaded its models and published a heartbeat."""
        from service.jobs import keys

        r = self.redis()
        deadline = time.monotonic() + timeout
        while not r.exists(keys.worker(self.worker_names[index])):
            if self.workers[index].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {index} did not start:\n{self.read_logs()}")
            time.sleep(0.05)
        return self

    def wait_serving(self, task: str, timeout: float = 90) -> "Stack":
        """Until a live worker serves `task` (workers serving only some tasks never make /readyz answer 200)."""
        self.wait_ready(timeout, path="/healthz")
        deadline = time.time() + timeout
        while task in httpx.get(self.url + "/readyz", timeout=2).json().get("missing_tasks", [task]):
            if time.time() > deadline or any(p.poll() is not None for p in self.workers):
                raise RuntimeError(f"no worker serves {task}:\n" + self.read_logs())
            time.sleep(0.1)
        return self

    # ---- using it

    def client(self, key: str | None = None) -> httpx.Client:
        """An HTTP client of the API (`key`: sent as `Authorization: Bearer`)."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, timeout=60, headers=headers)

    def redis(self):
        from service.redis import sync_client

        return sync_client(self.redis_url)

    def read_logs(self) -> str:
        return "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-4000:]}"
                         for f in sorted(self.logs.glob("*.log")))

    # ---- the end

    def __enter__(self) -> "Stack":
        return self.wait_ready()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        held = _terminate([*self.others, *self.workers, self.api], STOP_GRACE_S)
        for proc in held:
            tail = Path(proc.log).read_text(errors="replace")[-6000:]
            warnings.warn(f"{Path(proc.log).stem} (pid {proc.pid}) did not stop within {STOP_GRACE_S}s of SIGTERM; "
                          f"the end of its log, its threads' stacks last:\n{tail}", stacklevel=2)
        if self._embedded:
            self._embedded.shutdown()
        if self.temporary:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def _no_core() -> None:
    """No core files from this process and those it starts from now on: the SIGABRT `_terminate` may send
    would leave one (a child inherits the limit; set here, before a fork, as `preexec_fn` is unsafe with threads)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    if soft != 0:
        resource.setrlimit(resource.RLIMIT_CORE, (0, hard))


def _terminate(procs: list[subprocess.Popen], grace: float) -> list[subprocess.Popen]:
    """SIGTERM each of `procs`, and wait for all of them `grace` seconds in all. Those still running then
    get a SIGABRT (faulthandler prints their stacks), then a SIGKILL; they are returned."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    held = []
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            held.append(p)
            p.send_signal(signal.SIGABRT)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            try:  # and what it started (an API's processes): each stack process leads a session of its own
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
    return held
