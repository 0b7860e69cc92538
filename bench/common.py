"""What the benches share: a throwaway Fresco deployment (embedded Redis, API and worker processes, all
real, in a temporary data dir), percentiles, process memory, and the tiny Turbo job they all time.

Every bench starts its own Redis and processes, so nothing it does touches `./.fresco` or a running
`make run`, and every figure it prints comes from one run of one script (the machines are noisy).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/x.py` as well as `python -m bench.x`
    sys.path.insert(0, str(ROOT))

from workers import tuning  # noqa: E402

tuning.tune_process()  # before torch: the benches time pipelines in-process as a worker process runs them

from tests.stack import Stack, free_port  # noqa: E402,F401


def percentile(values, q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    data = sorted(values)
    if not data:
        return float("nan")
    k = (len(data) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def _status_bytes(field: str, pid: int | str = "self") -> int:
    """A size field of /proc/PID/status (VmRSS, VmHWM) in bytes; 0 where there is none."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def rss_bytes(pid: int | str = "self") -> int:
    return _status_bytes("VmRSS", pid)


def children(pid: int) -> dict[int, list[str]]:
    """The live child processes of `pid` (Linux /proc): pid -> argv (a `fresco up`'s API and workers, say)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold spaces
        if int(fields[1]) == pid and fields[0] != "Z":
            found[int(entry.name)] = [a.decode(errors="replace") for a in argv if a]
    return found


def peak_rss() -> int:
    """This process's peak RSS (VmHWM) since it started, or since reset_peak_rss()."""
    return _status_bytes("VmHWM")


def reset_peak_rss() -> bool:
    """Linux: set VmHWM to the current RSS (clear_refs 5); False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def turbo_body(size: int = 512, steps: int = 1, seed: int = 7, prompt: str = "a red fox in the snow") -> dict:
    return {"task": "turbo", "prompt": prompt, "width": size, "height": size, "steps": steps, "seed": seed}


def turbo_params(size: int = 512, steps: int = 1, seed: int = 7, prompt: str = "a red fox in the snow") -> dict:
    """The parameters the API resolves `turbo_body(...)` to (what the worker's pipeline receives)."""
    return {"prompt": prompt, "width": size, "height": size, "steps": steps, "num_images": 1, "seed": seed,
            "guidance_scale": 0.0, "output_format": "png"}


class Deployment(Stack):
    """A throwaway deployment for a bench (tests/stack.py, the launcher the tests use too): an embedded
    Redis (or `redis_url`), `api_processes` API processes and `workers` worker processes serving `tasks`
    only (so they load only those models and start fast), in a temporary data dir removed at the end
    unless `keep`; no worker serves metrics unless asked. Each worker is its own interpreter, as deployed
    (not forked from the tests' fork server: its pages, shared until written, would count in the figures)."""

    def __init__(self, *, workers: int = 1, api_processes: int = 1, tasks: str = "turbo",
                 redis_url: str | None = None, api_env: dict | None = None, worker_env: dict | None = None,
                 env: dict | None = None, log_level: str = "WARNING", keep: bool = False):
        super().__init__(redis_url, None, {"FRESCO_WORKER_METRICS_PORT": "0", **(env or {})}, workers,
                         tasks=tasks, api_processes=api_processes, api_env=api_env, worker_env=worker_env,
                         log_level=log_level, torch_threads=0, keep=keep, fork_workers=False)

    def __enter__(self) -> "Deployment":
        return self  # a bench says when it waits (`wait_ready`, `wait_worker`)


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
