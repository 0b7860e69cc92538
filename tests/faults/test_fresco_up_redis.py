"""`fresco up` supervises its embedded Redis: killed with kill -9 while jobs wait and one runs, it is started
again on the same socket and data directory (AOF replayed), and the API and the worker carry on without
a restart of their own, losing no job."""

from __future__ import annotations

import os
import re
import signal
import time

import httpx

from tests.faults.fresco_up import FrescoUp
from tests.faults.test_faults import DONE, FAST, slow_job, turbo


def _job(base: str, job_id: str) -> dict | None:
    """The job's view, or None while the API answers 503 (Redis away)."""
    r = httpx.get(f"{base}/jobs/{job_id}", timeout=5)
    if r.status_code == 503:
        assert "retry-after" in r.headers, r.text
        return None
    return r.json()


def _wait(base: str, job_id: str, statuses: set[str], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = _job(base, job_id)
        if job is not None and job["status"] in statuses:
            return job
        assert time.monotonic() < deadline, f"job {job_id} never reached {statuses}: {job}"
        time.sleep(0.05)


def test_redis_killed_under_fresco_up_comes_back_and_every_job_succeeds(tmp_path):
    up = FrescoUp(tmp_path, profile=("tiny-turbo", "tiny-sdxl"), env=FAST)
    try:
        pid = int(up.wait_line(r"embedded Redis on \S+ \(pid (\d+)", 30).group(1))
        up.wait_line(r"ready in", 90)
        children = sorted(p for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == up.proc.pid)
        with httpx.Client(base_url=up.url, timeout=10) as c:
            running = c.post("/generate", json=slow_job(3)).json()
            queued = [c.post("/generate", json=turbo(f"q{i}", steps=1)).json() for i in range(4)]
        _wait(up.url, running["id"], {"running"}, 30)
        time.sleep(1.2)  # appendfsync everysec: what was acknowledged a second ago is on disk
        lines = len(up.lines)
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        back = up.wait_line(r"embedded Redis restarted in [\d.]+s \(pid (\d+) -> (\d+)", 10, after=lines)
        assert int(back.group(1)) == pid and int(back.group(2)) != pid
        ends = [_wait(up.url, j["id"], DONE, 40) for j in (running, *queued)]
        assert [e["status"] for e in ends] == ["succeeded"] * 5, ends
        print(f"Redis kill -9 under fresco up: back in {back.group(0)}; 5 of 5 jobs succeeded "
              f"{time.monotonic() - killed:.1f}s after the kill")
        # The API and the worker reconnected: neither was restarted.
        assert sorted(p for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == up.proc.pid) == children
        assert not re.search(r"(api|worker-\d+) .*restarting it", up.output), up.output
        assert "embedded Redis was killed by SIGKILL; restarting it in 0.0s" in up.output
    finally:
        code = up.stop()
    assert code == 0, up.output


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError):
        return None
