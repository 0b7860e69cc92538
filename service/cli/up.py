"""`fresco up`: the local run. An embedded Redis (unless FRESCO_REDIS_URL is set), the API and worker
processes, each a `python -m service.cli api|worker` child (`Child`), restarted with a growing pause
when it dies, all stopped on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from service.settings import Settings, child_environment


class Child:
    def __init__(self, name: str, argv: list[str], env: dict[str, str]):
        self.name, self.argv, self.env = name, argv, env
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.next_start = 0.0

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env)

    def check(self, log) -> None:
        """Restart a child that exited, with a growing pause if it keeps dying."""
        if self.proc is None or self.proc.poll() is None:
            return
        now = time.monotonic()
        if self.next_start == 0.0:
            delay = min(30.0, 2.0 ** min(self.restarts, 5)) if self.restarts else 0.5
            log(f"{self.name} exited with code {self.proc.returncode}; restarting in {delay:.1f}s")
            self.next_start = now + delay
        if now >= self.next_start:
            self.restarts += 1
            self.next_start = 0.0
            self.start()

    def stop(self, grace: float) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def cmd_up(settings: Settings, args) -> int:
    import httpx

    from service.redis import url_or_embedded

    def say(msg: str) -> None:
        print(f"fresco: {msg}", flush=True)

    url, embedded = url_or_embedded(settings)
    if embedded:
        say(f"embedded Redis on {url} (AOF on, data in {settings.data_dir.resolve()})")
    env = child_environment(FRESCO_REDIS_URL=url)
    exe = [sys.executable, "-m", "service.cli"]
    children = [Child("api", exe + ["api"], env)]
    for i in range(args.workers):
        worker_env = dict(env, FRESCO_WORKER_METRICS_PORT=str(settings.worker_metrics_port + i)
                          if settings.worker_metrics_port else "0")
        children.append(Child(f"worker-{i}", exe + ["worker"], worker_env))

    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    base = f"http://{settings.host}:{settings.port}"
    profile = "tiny profile (random weights on the CPU: images are noise)" if not settings.models_file \
        else f"models from {settings.models_file}"
    say(f"starting the API on {base} and {args.workers} worker(s), {profile}")
    for child in children:
        child.start()
    started, ready = time.monotonic(), False
    try:
        while not stopping:
            for child in children:
                child.check(say)
            if not ready:
                try:
                    ready = httpx.get(f"{base}/readyz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    pass
                if ready:
                    say(f"ready in {time.monotonic() - started:.1f}s: {base}  (docs: {base}/docs, "
                        f"metrics: {base}/metrics). Ctrl-C stops everything.")
                    say(f"playground: open {base}/ in a browser")
            time.sleep(0.5)
    finally:
        say("stopping")
        for child in reversed(children):
            child.stop(grace=args.grace)
        if embedded:
            embedded.close()
    return 0
