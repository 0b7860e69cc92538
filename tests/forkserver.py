"""The stacks' workers, forked from one process that has already imported what a worker imports.

A worker's imports (torch, diffusers, transformers, peft) cost about 5 s of CPU at every start, and the
suite starts some fifty workers (each fault test's restarts, each module's stack, the benches' deployments):
on two cores that was a minute and a half of the suite. A fork server pays them once per test process:
it imports them, then forks each worker from itself, so a worker starts in a fraction of a second (and
then loads its models as always). What runs is the real `fresco worker` (`service.cli.main(["worker"])`),
a process of its own that the tests signal, kill and wait for as before (`Forked` is used as a Popen is);
only the imports before it are shared, as with gunicorn's `--preload` or Python's `forkserver`.

Forking is safe here because the server does nothing but import: it never initialises CUDA, never runs a
torch operation (libgomp's thread pool does not survive a fork), and checks before it serves that its
imports started no thread beyond the one `import torch` itself starts (which a fork leaves behind, as
PyTorch's DataLoader workers, forked after `import torch`, always have); where they did, it says so and
exits, and the stacks start their workers the plain way. Settings read as a library loads (OMP_*, the
malloc and OpenMP tuning of workers/tuning.py) are the server's, started with the test process's
environment, as the plain workers were.

Protocol, on two pipes passed to the server (`--fds R W`), one JSON object per line:
  -> {"argv": ["worker"], "env": {...}, "cwd": "...", "log": "path" or null, "session": true or false}
  <- {"pid": N} or {"error": "why"}
  <- {"exit": N, "code": C} when a forked process ends (C as Popen's returncode: -signal when killed)
The first line the server writes is {"ready": true} (or {"error": why}, and it exits).
A forked process runs `service.cli.main(argv)` with exactly `env` as its environment, in `cwd`, its
output to `log` (else to the server's own stdout and stderr), in a session of its own when `session`.
"""

from __future__ import annotations

import atexit
import faulthandler
import json
import os
import select
import signal
import subprocess
import sys
import threading
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Unavailable(RuntimeError):
    """The fork server did not start, or has ended: start the process the plain way."""


# ---- the caller's side


class ForkServer:
    """A running fork server; `spawn` forks a `fresco` process from it, as a Popen-like `Forked`."""

    def __init__(self, env: dict[str, str] | None = None):
        r_req, w_req = os.pipe()  # requests: ours to write, the server's to read
        r_rep, w_rep = os.pipe()  # replies and exits
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "tests.forkserver", "--fds", str(r_req), str(w_rep)],
                                         env=env, cwd=ROOT, pass_fds=(r_req, w_rep), start_new_session=True)
        finally:
            os.close(r_req)
            os.close(w_rep)
        self._requests = os.fdopen(w_req, "w", buffering=1)
        self._replies = os.fdopen(r_rep, "r")
        self._lock = threading.Lock()  # one request at a time
        self._cond = threading.Condition()
        self._answers: list[dict] = []
        self._exits: dict[int, int] = {}
        self.gone = False
        first = self._replies.readline()  # the server's imports: seconds
        try:
            hello = json.loads(first)
        except ValueError:
            hello = {"error": f"the fork server ended before it was ready (exit {self.proc.wait()})"}
        if "ready" not in hello:
            self.close()
            raise Unavailable(hello.get("error", "the fork server did not start"))
        threading.Thread(target=self._read, name="forkserver-replies", daemon=True).start()

    def _read(self) -> None:
        for line in self._replies:
            msg = json.loads(line)
            with self._cond:
                if "exit" in msg:
                    self._exits[msg["exit"]] = msg["code"]
                else:
                    self._answers.append(msg)
                self._cond.notify_all()
        with self._cond:
            self.gone = True
            self._cond.notify_all()

    def spawn(self, argv: list[str], env: dict[str, str], *, cwd: str | os.PathLike = ROOT,
              log: str | os.PathLike | None = None, session: bool = False) -> "Forked":
        """Fork `fresco <argv>` with `env`; raises Unavailable when the server has ended."""
        request = {"argv": list(argv), "env": dict(env), "cwd": str(cwd), "log": str(log) if log else None,
                   "session": session}
        with self._lock:
            try:
                self._requests.write(json.dumps(request) + "\n")
                self._requests.flush()
            except (BrokenPipeError, ValueError):
                raise Unavailable("the fork server has ended") from None
            with self._cond:
                if not self._cond.wait_for(lambda: self._answers or self.gone, 30) or not self._answers:
                    raise Unavailable("the fork server did not answer")
                answer = self._answers.pop(0)
        if "pid" not in answer:
            raise Unavailable(answer.get("error", "the fork server did not fork"))
        with self._cond:  # an earlier process of the same pid ended before this one was forked: not this one's
            self._exits.pop(answer["pid"], None)
        return Forked(self, answer["pid"], [sys.executable, "-m", "service.cli", *argv])

    def _exit_code(self, pid: int, timeout: float | None) -> int | None:
        with self._cond:
            self._cond.wait_for(lambda: pid in self._exits or self.gone, timeout)
            if pid in self._exits:
                return self._exits[pid]
        if self.gone and not _exists(pid):  # reaped by init once the server ended: its status is lost
            return 255
        return None

    def close(self) -> None:
        """End the server (the processes it forked go on; stop them first)."""
        for f in (self._requests, self._replies):
            try:
                f.close()
            except OSError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Forked:
    """A forked process, used as a subprocess.Popen is: pid, poll, wait, returncode, signals."""

    def __init__(self, server: ForkServer, pid: int, args: list[str]):
        self.server, self.pid, self.args = server, pid, args
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server._exit_code(self.pid, 0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self.server._exit_code(self.pid, timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


# ---- the server's side

# What a worker imports before its first job, beyond `workers.worker` (RQ, Redis, torch): diffusers' pipelines
# of every family in the table (with their models, transformers' encoders and peft), the upscalers' loader,
# the quantizer, accelerate's offload hooks, S3 storage.
PRELOAD = ("service.cli", "workers.worker", "workers.tiny_adapters", "workers.spandrel_import", "peft", "torchao",
           "accelerate.hooks", "boto3")


def preload() -> int:
    """Import what a worker imports; the threads `import torch` alone left running."""
    import importlib

    from workers import quiet, tuning

    tuning.tune_process()  # before torch loads: the allocator and OpenMP settings it reads
    quiet.silence_known_noise()
    import torch  # noqa: F401

    torch_threads = _threads()
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional part not installed: the workers go without it too
            pass
    from workers.families import FAMILIES

    for family in FAMILIES.values():
        for mode in family.pipelines:
            family.pipeline_class(mode)
    return torch_threads


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def serve(r: int, w: int) -> int:
    out = os.fdopen(w, "w", buffering=1)

    def say(msg: dict) -> None:
        out.write(json.dumps(msg) + "\n")
        out.flush()

    try:
        torch_threads = preload()
    except Exception as exc:  # noqa: BLE001 (whatever it is, the caller starts its workers the plain way)
        say({"error": f"the fork server's imports failed: {exc!r}"})
        return 1
    if threading.active_count() != 1 or _threads() > torch_threads:
        say({"error": f"the fork server's imports started threads ({_threads()}, {torch_threads} after "
                      "`import torch`); forking is not safe"})
        return 1
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    say({"ready": True})
    pending = b""
    while True:
        readable, _, _ = select.select([r, wake_r], [], [], 1.0)
        if wake_r in readable:
            os.read(wake_r, 4096)
        _reap(say)
        if r not in readable:
            continue
        data = os.read(r, 1 << 20)
        if not data:  # the caller has gone
            return 0
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            try:
                request = json.loads(line)
                pid = os.fork()
            except Exception as exc:  # noqa: BLE001 (a bad request, or no fork: say why, go on)
                say({"error": repr(exc)})
                continue
            if pid == 0:
                code = 70
                try:
                    code = _child(request, (r, w, wake_r, wake_w))
                finally:
                    os._exit(code)
            say({"pid": pid})


def _reap(say) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        say({"exit": pid, "code": os.waitstatus_to_exitcode(status)})


def _child(request: dict, fds: tuple[int, ...]) -> int:
    """In the forked process: become `fresco <argv>` as a fresh `python -m service.cli` would be."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for fd in fds:
        os.close(fd)
    if request.get("session"):
        os.setsid()
    if request.get("log"):
        fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    if os.environ.get("PYTHONFAULTHANDLER"):
        faulthandler.enable()
    sys.argv = [str(ROOT / "service" / "cli" / "__main__.py"), *request["argv"]]
    try:
        from service.cli import main

        code = main(request["argv"])
    except SystemExit as exc:  # as the interpreter ends: an int is the status, anything else is printed
        code = exc.code
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # noqa: BLE001 (as the interpreter would: the traceback, exit 1)
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    return int(code or 0)


if __name__ == "__main__":
    if sys.argv[1:2] != ["--fds"] or len(sys.argv) != 4:
        sys.exit("usage: python -m tests.forkserver --fds READ WRITE (started by ForkServer)")
    sys.exit(serve(int(sys.argv[2]), int(sys.argv[3])))
