"""`fresco up | api | worker | generate | hash-key | convert | webhooks | webhook-secret`: the composition
root, the one module that starts the API (service/api/) or a worker (workers/, imported here only).

`up` is the local run: an embedded Redis (unless FRESCO_REDIS_URL is set), the API and worker
processes, restarted when they die, all stopped on Ctrl-C or SIGTERM. A real deployment runs
`fresco api` and `fresco worker` apart, against a shared Redis.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from service.settings import Settings, child_environment
from service.tasks import TASK_NAMES


# ---------------------------------------------------------------- up


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


# ---------------------------------------------------------------- api, worker


def _multiprocess_metrics_dir() -> tuple[str, bool]:
    """A fresh directory for prometheus_client's multiprocess files, so counters sum over every API
    process (service/api/metrics.py). A PROMETHEUS_MULTIPROC_DIR given by the operator is used, emptied of
    an earlier run's files; else a temporary one, removed on exit. Set before any process imports
    prometheus_client (uvicorn's processes inherit the environment)."""
    import os
    import tempfile

    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for old in path.glob("*.db"):
            old.unlink(missing_ok=True)
        return str(path), False
    path = tempfile.mkdtemp(prefix="fresco-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path, True


def cmd_api(settings: Settings, args) -> int:
    import importlib.util
    import os
    import shutil

    import uvicorn

    from service.logs import configure_logging

    configure_logging(settings)
    processes = args.processes or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    metrics_dir, temporary = _multiprocess_metrics_dir() if processes > 1 else (None, False)
    # uvloop and httptools (uvicorn[standard]) when installed: the fastest event loop and HTTP parser.
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "auto"
    http = "httptools" if importlib.util.find_spec("httptools") else "auto"
    try:
        uvicorn.run("service.api.app:create_app", factory=True, host=settings.host, port=settings.port,
                    workers=processes, loop=loop, http=http, access_log=args.access_log, backlog=args.backlog,
                    log_level=settings.log_level.lower(), timeout_graceful_shutdown=30, log_config=None)
    finally:
        if temporary and metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def cmd_worker(settings: Settings, args) -> int:
    from workers import tuning

    tuning.tune_process()  # before torch is imported: the allocator and OpenMP settings it reads
    from workers.worker import main

    return main(settings)


# ---------------------------------------------------------------- generate


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def _control_arg(item: str) -> dict | None:
    """`--control MODEL=FILE` or `MODEL=FILE:SCALE` as a `control` entry (None: not that form). The file
    stays a path: the client sends it as a data URL."""
    name, sep, path = item.partition("=")
    scale = None
    head, colon, tail = path.rpartition(":")
    if colon:
        try:
            scale, path = float(tail), head
        except ValueError:
            pass
    if not sep or not name or not Path(path).is_file():
        return None
    return {"model": name, "image": Path(path), **({"scale": scale} if scale is not None else {})}


def _lora_arg(item: str) -> dict:
    """`--lora NAME` or `NAME:SCALE`, as AUTOMATIC1111's <lora:name:scale>."""
    name, sep, scale = item.rpartition(":")
    try:
        return {"name": name, "scale": float(scale)} if sep else {"name": item}
    except ValueError:
        return {"name": item}


def _request_fields(args) -> dict | str:
    """The request's fields (all but `task`) from the flags; a usage message when a flag is malformed."""
    fields: dict = {}
    for flag in ("prompt", "model", "seed"):
        if getattr(args, flag) is not None:
            fields[flag] = getattr(args, flag)
    if args.image:
        fields["image"] = Path(args.image)
    if args.lora:
        fields["loras"] = [_lora_arg(item) for item in args.lora]
    for item in args.control or []:
        entry = _control_arg(item)
        if entry is None:
            return f"--control takes CONTROLNET=IMAGE_FILE[:SCALE], got {item!r}"
        fields.setdefault("control", []).append(entry)
    for item in args.param or []:
        key, sep, value = item.partition("=")
        if not sep:
            return f"--param takes key=value, got {item!r}"
        fields[key] = _value(value)
    return fields


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _report(exc) -> None:
    """An API error as `error 422: request is invalid` and one line per failing field."""
    _say(f"error {exc.status}: {exc.message}" if exc.status else f"error: {exc.message}")
    for field in exc.fields:
        _say(f"  {field.get('field')}: {field.get('message')}")


def cmd_generate(settings: Settings, args) -> int:
    """Submit a job, follow it with a progress bar (Ctrl-C cancels it), save its results under --out."""
    from service.client import Client, FrescoError
    from service.client.core import env_base_url

    fields = _request_fields(args)
    if isinstance(fields, str):
        _say(fields)
        return 2
    base_url = args.url or env_base_url() or f"http://{settings.host}:{settings.port}"
    with Client(base_url, args.api_key) as client:
        try:
            job = client.submit(args.task, **fields)
            try:  # from the moment the job is announced, Ctrl-C cancels it
                _say(f"job {job.id} ({job.task}, model {job.model}, seed {job.seed})")
                job = _follow(client, job)
            except KeyboardInterrupt:
                _cancel(client, job)
                return 130
            if not job.succeeded:
                _say(f"job {job.status}: {job.error.message if job.error else ''}")
                return 1
            for warning in job.warnings:
                _say(f"warning: {warning}")
            for path in client.download(job, args.out):
                print(path)
        except FrescoError as exc:
            _report(exc)
            return 1
        except KeyboardInterrupt:  # before the job existed, or while downloading: nothing to cancel
            return 130
    return 0


def _cancel(client, job) -> None:
    from service.client import FrescoError

    try:
        client.cancel(job)
    except FrescoError as exc:  # it ended meanwhile (409), or the API is gone: say so, exit all the same
        _say(f"could not cancel job {job.id}: {exc.message}")
        return
    _say(f"canceled job {job.id}")


def _progress_bar():
    """rich's progress bar on stderr: the stage, a bar, the percentage done, the denoising step, the
    time left. On a terminal it redraws in place; into a file or pipe it writes its last state once."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.fields[stage]:<8}"), BarColumn(), TaskProgressColumn(),
                    TextColumn("{task.fields[steps]:<11}"), TextColumn("ETA"), TimeRemainingColumn(),
                    console=Console(stderr=True))


def _bar_fields(progress) -> dict:
    steps = f"step {progress.step}/{progress.total_steps}" if progress.total_steps else ""
    return {"completed": progress.fraction, "stage": progress.stage, "steps": steps}


def _follow(client, job):
    """Show the job's progress events on the bar until it ends; the terminal Job."""
    with _progress_bar() as bar:
        row = bar.add_task(job.id, total=1.0, **_bar_fields(job.progress))
        # Drawn at each event, besides rich's own ticks, so that no stage goes by unseen.
        job = client.follow(job, lambda event: bar.update(row, refresh=True, **_bar_fields(event.progress)))
        bar.update(row, refresh=True, **_bar_fields(job.progress))
    return job


def cmd_hash_key(settings: Settings, args) -> int:
    """Print a key's SHA-256 digest for FRESCO_API_KEYS (and a new random key when none is given)."""
    from service.api.auth import digest, new_key

    key = args.key or new_key()
    if not args.key:
        print(f"key (give this to the client, keep it secret): {key}")
    print(f"FRESCO_API_KEYS entry: {args.name}:{digest(key)}")
    return 0


def cmd_convert(settings: Settings, args) -> int:
    """Rewrite a model's pickled weights as safetensors (workers/convert.py)."""
    from workers.convert import convert

    try:
        written = convert(Path(args.src), Path(args.dst))
    except ValueError as exc:
        print(f"fresco convert: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} safetensors file(s) under {args.dst}; it loads without trust_pickle")
    return 0


# ---------------------------------------------------------------- webhooks


def cmd_webhooks(settings: Settings, args) -> int:
    """Deliver webhooks alone (service/webhooks/standalone.py)."""
    import asyncio

    from service.logs import configure_logging
    from service.webhooks.standalone import serve

    if not settings.webhook_secret:
        print("fresco webhooks: set FRESCO_WEBHOOK_SECRET (`fresco webhook-secret` makes one)", file=sys.stderr)
        return 2
    configure_logging(settings)
    return asyncio.run(serve(settings, metrics_port=args.metrics_port))


def cmd_webhook_secret(settings: Settings, args) -> int:
    """Print a new secret for FRESCO_WEBHOOK_SECRET (give it to the receivers too: they verify with it)."""
    from service.webhooks.signing import new_secret

    print(new_secret())
    return 0


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fresco", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run Redis (embedded), the API and worker(s) together, in the foreground")
    up.add_argument("--workers", type=int, default=1, help="worker processes (each loads its own models)")
    up.add_argument("--grace", type=float, default=30.0, help="seconds a child gets to stop before it is killed")
    api = sub.add_parser("api", help="run the HTTP API alone")
    api.add_argument("--processes", type=int, default=1,
                     help="API processes sharing the port (0: one per CPU); metrics sum over all of them")
    api.add_argument("--backlog", type=int, default=2048, help="the listening socket's connection backlog")
    api.add_argument("--access-log", action="store_true")
    sub.add_parser("worker", help="run one GPU worker alone")
    gen = sub.add_parser("generate", help="submit a job, follow its progress, save its results")
    gen.add_argument("task", choices=TASK_NAMES)
    gen.add_argument("--prompt")
    gen.add_argument("--image", help="input image file (img2img, svd)")
    gen.add_argument("--model")
    gen.add_argument("--seed", type=int)
    gen.add_argument("--lora", action="append", metavar="NAME[:SCALE]",
                     help="a LoRA GET /models lists for the model (repeat for several)")
    gen.add_argument("--control", action="append", metavar="CONTROLNET=IMAGE[:SCALE]",
                     help="a ControlNet GET /models lists for the model, and its control image (repeat for two)")
    gen.add_argument("--param", action="append", metavar="KEY=VALUE", help="any request field; JSON values")
    gen.add_argument("--url", default=None,
                     help="the API's base URL (default: FRESCO_URL, else http://FRESCO_HOST:FRESCO_PORT)")
    gen.add_argument("--out", default=".", help="folder for the results")
    gen.add_argument("--api-key", default=None,
                     help="an API key, sent as Authorization: Bearer (default: FRESCO_API_KEY)")
    hk = sub.add_parser("hash-key", help="make an API key's digest for FRESCO_API_KEYS")
    hk.add_argument("name", help="the key's name, e.g. the client it belongs to")
    hk.add_argument("key", nargs="?", help="an existing key (default: make a new random one)")
    conv = sub.add_parser("convert", help="rewrite a model's pickled (.bin, .ckpt) weights as safetensors")
    conv.add_argument("src", help="a diffusers model directory, or one checkpoint file")
    conv.add_argument("dst", help="a new directory (or .safetensors file) to write")
    wh = sub.add_parser("webhooks", help="deliver webhooks alone (API processes also do, unless "
                                         "FRESCO_WEBHOOK_DISPATCHER=false)")
    wh.add_argument("--metrics-port", type=int, default=0, help="serve the dispatcher's /metrics here (0: off)")
    sub.add_parser("webhook-secret", help="make a secret for FRESCO_WEBHOOK_SECRET")
    args = parser.parse_args(argv)
    settings = Settings()
    commands = {"up": cmd_up, "api": cmd_api, "worker": cmd_worker, "generate": cmd_generate,
                "hash-key": cmd_hash_key, "convert": cmd_convert, "webhooks": cmd_webhooks,
                "webhook-secret": cmd_webhook_secret}
    return commands[args.command](settings, args)


if __name__ == "__main__":
    sys.exit(main())
