"""`fresco up`: the local run. An embedded Redis (unless FRESCO_REDIS_URL is set), the API and worker
processes, each a `python -m service.cli api|worker` child (`Child`), all supervised: each one that dies
is started again (the embedded Redis on the same socket and data directory, replaying its AOF, so the
API and workers reconnect to the URL they have), with pauses that grow while it keeps dying quickly
(`RestartPolicy`); a child that exits with a configuration error (`EX_CONFIG`), or keeps dying at once,
is not started again: `fresco up` says why, stops the rest and exits non-zero. Until the service is
ready it says, every few seconds, what it waits for (/readyz's answer). Ctrl-C or SIGTERM stops all.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from service.config_errors import EX_CONFIG
from service.settings import Settings, child_environment

WAITING_EVERY_S = 10.0  # how often `fresco up` says what it still waits for, until the service is ready


@dataclass(frozen=True)
class Verdict:
    """What to do about a child that exited: start it again after `delay` seconds, or (`delay` None) give
    up, for the reason `why`."""

    delay: float | None
    quick_failures: int
    why: str = ""


@dataclass(frozen=True)
class RestartPolicy:
    """When a child that exited is started again: after `first_s`, the first time. One that dies within
    `quick_s` of its start failed quickly, and each further quick failure in a row doubles the pause (from
    `backoff_s`, at most `cap_s`), until `give_up_after` of them: then, as at once for a configuration error
    (exit `EX_CONFIG`), it is not restarted. A child killed by a signal (kill -9, the OOM killer) did not
    fail by itself: it is backed off the same way, but never given up on."""

    first_s: float = 0.5
    backoff_s: float = 1.0
    cap_s: float = 30.0
    quick_s: float = 30.0
    give_up_after: int = 5

    def after_exit(self, code: int | None, ran_s: float, quick_failures: int) -> Verdict:
        """The verdict on a child that exited with `code` after running `ran_s` seconds, the last
        `quick_failures` of its runs before this one having been quick failures."""
        if code == EX_CONFIG:
            return Verdict(None, quick_failures, f"stopped on a configuration error (exit {EX_CONFIG}); "
                                                 f"fix it and run fresco up again")
        failures = quick_failures + 1 if ran_s < self.quick_s else 0
        killed = code is not None and code < 0
        if failures >= self.give_up_after and not killed:
            return Verdict(None, failures, f"{exit_words(code)} {failures} times in a row, each within "
                                           f"{self.quick_s:.0f}s of its start")
        if failures <= 1:
            return Verdict(self.first_s, failures)
        return Verdict(min(self.cap_s, self.backoff_s * 2 ** (failures - 2)), failures)


CHILD_POLICY = RestartPolicy()
# Redis again at once (every client waits on it), then a growing pause if it keeps dying (a full disk, a
# corrupt AOF).
REDIS_POLICY = RestartPolicy(first_s=0.0, backoff_s=0.5, cap_s=10.0)


def exit_words(code: int | None) -> str:
    """How a process ended, in words: "exited with code 2", "was killed by SIGKILL"."""
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Supervised:
    """Something `fresco up` keeps running (`launch`, `running`, `exit_code`), restarted by `policy`."""

    def __init__(self, name: str, policy: RestartPolicy):
        self.name, self.policy = name, policy
        self.restarts = 0
        self.quick_failures = 0
        self.started_at = 0.0
        self.next_start: float | None = None

    def launch(self) -> None:
        raise NotImplementedError

    def running(self) -> bool:
        raise NotImplementedError

    def exit_code(self) -> int | None:
        return None

    def start(self) -> None:
        self.started_at = time.monotonic()
        self.launch()

    def check(self, log) -> str | None:
        """Restart this if it died and the policy says so (after its pause: this is called every half
        second); the reason to give up, when the policy says to."""
        if self.running():
            return None
        now = time.monotonic()
        if self.next_start is None:
            code = self.exit_code()
            verdict = self.policy.after_exit(code, now - self.started_at, self.quick_failures)
            if verdict.delay is None:
                return f"{self.name} {verdict.why}"
            self.quick_failures = verdict.quick_failures
            log(f"{self.name} {exit_words(code)}; restarting it in {verdict.delay:.1f}s")
            self.next_start = now + verdict.delay
        if now >= self.next_start:
            self.restarts += 1
            self.next_start = None
            try:
                self.start()
            except Exception as exc:  # it did not start: the next check counts a quick failure
                log(f"{self.name} did not start: {exc}")
            else:
                self.started()
        return None

    def started(self) -> None:
        """Called after a restart."""


class Child(Supervised):
    """A `python -m service.cli ...` child process."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], policy: RestartPolicy = CHILD_POLICY):
        super().__init__(name, policy)
        self.argv, self.env = argv, env
        self.proc: subprocess.Popen | None = None

    def launch(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env)

    def running(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def exit_code(self) -> int | None:
        return self.proc.returncode if self.proc is not None else None

    def stop(self, grace: float) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class RedisChild(Supervised):
    """The embedded Redis (service/redis.py EmbeddedRedis), already started: restarted on its own socket and
    data directory with AOF, so nothing acknowledged a second before it died is lost, and the API and
    workers (whose clients retry; the API answers 503 with Retry-After meanwhile) carry on."""

    def __init__(self, embedded, log, policy: RestartPolicy = REDIS_POLICY):
        super().__init__("embedded Redis", policy)
        self.embedded, self.log = embedded, log
        self.started_at = time.monotonic()
        self.pid = embedded.pid

    def launch(self) -> None:
        self.embedded.restart()

    def running(self) -> bool:
        return self.embedded.alive()

    def exit_code(self) -> int | None:
        return -signal.SIGKILL if self.pid else None  # a daemon: its exit status is not ours to read

    def started(self) -> None:
        self.log(f"embedded Redis restarted in {time.monotonic() - self.started_at:.2f}s (pid {self.pid} -> "
                 f"{self.embedded.pid}; same socket and data directory, AOF replayed)")
        self.pid = self.embedded.pid


def waiting_for(base: str, readyz) -> str:
    """What the service still waits for, in one line, from /readyz's answer (`readyz`: its JSON body, or
    None when the API does not answer)."""
    if readyz is None:
        return f"the API to answer on {base}"
    if not readyz.get("redis", True):
        return "Redis to answer"
    missing = readyz.get("missing_tasks") or []
    if not missing:
        return "the API to say it is ready"
    defaults = {d["task"]: d["model"] for d in readyz.get("unserved_defaults") or []}
    tasks = ", ".join(f"{t} ({defaults[t]})" if t in defaults else t for t in missing)
    return (f"a live worker for each task; none serves {tasks} yet "
            f"({readyz.get('workers', 0)} worker(s) up; a worker loads its models first)")


def _readyz(httpx, base: str) -> tuple[bool, dict | None]:
    try:
        r = httpx.get(f"{base}/readyz", timeout=1)
    except httpx.HTTPError:
        return False, None
    try:
        body = r.json()
    except ValueError:
        body = {}
    return r.status_code == 200, body


def cmd_up(settings: Settings, args) -> int:
    import httpx

    from service.redis import url_or_embedded

    def say(msg: str) -> None:
        print(f"fresco: {msg}", flush=True)

    url, embedded = url_or_embedded(settings)
    if embedded:
        say(f"embedded Redis on {url} (pid {embedded.pid}, AOF on, data in {settings.data_dir.resolve()})")
    env = child_environment(FRESCO_REDIS_URL=url)
    exe = [sys.executable, "-m", "service.cli"]
    children = [Child("api", exe + ["api"], env)]
    for i in range(args.workers):
        worker_env = dict(env, FRESCO_WORKER_METRICS_PORT=str(settings.worker_metrics_port + i)
                          if settings.worker_metrics_port else "0")
        children.append(Child(f"worker-{i}", exe + ["worker"], worker_env))
    supervised: list[Supervised] = ([RedisChild(embedded, say)] if embedded else []) + children

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
    started, ready, said_at, gave_up = time.monotonic(), False, time.monotonic(), None
    try:
        while not stopping and gave_up is None:
            for one in supervised:
                gave_up = gave_up or one.check(say)
            if not ready and gave_up is None:
                ready, body = _readyz(httpx, base)
                if ready:
                    say(f"ready in {time.monotonic() - started:.1f}s: {base}  (docs: {base}/docs, "
                        f"metrics: {base}/metrics). Ctrl-C stops everything.")
                    say(f"playground: open {base}/ in a browser")
                    unserved = body.get("unserved_defaults") or []
                    if unserved:
                        say("note: no worker serves the default model of " + ", ".join(
                            f"{d['task']} ({d['model']})" for d in unserved) + ": requests for these tasks must "
                            "name a model a worker serves, or they wait in the queue")
                elif time.monotonic() - said_at >= WAITING_EVERY_S:
                    said_at = time.monotonic()
                    say(f"waiting ({said_at - started:.0f}s) for {waiting_for(base, body)}")
            time.sleep(0.5)
    finally:
        say(f"giving up: {gave_up}; stopping" if gave_up else "stopping")
        for child in reversed(children):
            child.stop(grace=args.grace)
        if embedded:
            embedded.close()
    if gave_up:
        return EX_CONFIG if any(c.exit_code() == EX_CONFIG for c in children) else 1
    return 0
