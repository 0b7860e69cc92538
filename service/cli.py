"""`fresco up | api | worker | generate | hash-key | convert | webhooks | webhook-secret`: the composition
root, the one module that starts the API (service/api/) or a worker (workers/, imported here only).

`up` is the local run: an embedded Redis (unless FRESCO_REDIS_URL is set), the API and worker
processes, restarted when they die, all stopped on Ctrl-C or SIGTERM. A real deployment runs
`fresco api` and `fresco worker` apart, against a shared Redis.
"""

from __future__ import annotations

import argparse
import base64
import json
import mimetypes
import signal
import subprocess
import sys
import time
from pathlib import Path

from service.jobs.states import EventType, JobStatus
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


def _data_url(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def _bar(progress: dict, status: str) -> str:
    fraction = float(progress.get("fraction", 0))
    filled = int(fraction * 30)
    stage = progress.get("stage", status)
    steps = f" {progress.get('step', 0)}/{progress.get('total_steps', 0)}" if progress.get("total_steps") else ""
    return f"\r[{'#' * filled}{'.' * (30 - filled)}] {fraction * 100:5.1f}% {stage}{steps}   "


def _control_arg(item: str) -> dict | None:
    """`--control MODEL=FILE` or `MODEL=FILE:SCALE` as a `control` entry (None: not that form)."""
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
    return {"model": name, "image": _data_url(Path(path)), **({"scale": scale} if scale is not None else {})}


def cmd_generate(settings: Settings, args) -> int:
    import httpx

    body: dict = {"task": args.task}
    if args.prompt is not None:
        body["prompt"] = args.prompt
    if args.image:
        body["image"] = _data_url(Path(args.image))
    if args.model:
        body["model"] = args.model
    if args.seed is not None:
        body["seed"] = args.seed
    for item in args.lora or []:  # NAME or NAME:SCALE, as AUTOMATIC1111's <lora:name:scale>
        name, sep, scale = item.rpartition(":")
        try:
            entry = {"name": name, "scale": float(scale)} if sep else {"name": item}
        except ValueError:
            entry = {"name": item}
        body.setdefault("loras", []).append(entry)
    for item in args.control or []:
        entry = _control_arg(item)
        if entry is None:
            print(f"--control takes CONTROLNET=IMAGE_FILE[:SCALE], got {item!r}", file=sys.stderr)
            return 2
        body.setdefault("control", []).append(entry)
    for item in args.param or []:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"--param takes key=value, got {item!r}", file=sys.stderr)
            return 2
        body[key] = _value(value)
    base = args.url.rstrip("/")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with httpx.Client(base_url=base, timeout=httpx.Timeout(30, read=None), headers=headers) as client:
        r = client.post("/generate", json=body)
        if r.status_code >= 400:
            err = r.json().get("error", {})
            print(f"error {r.status_code}: {err.get('message')}", file=sys.stderr)
            for f in err.get("fields") or []:
                print(f"  {f['field']}: {f['message']}", file=sys.stderr)
            return 1
        job = r.json()
        print(f"job {job['id']} ({job['task']}, model {job['model']}, seed {job['params'].get('seed')})",
              file=sys.stderr)
        try:
            job = _follow(client, job["id"])
        except KeyboardInterrupt:
            client.delete(f"/jobs/{job['id']}")
            print("\ncanceled", file=sys.stderr)
            return 130
        print(file=sys.stderr)
        if job["status"] != JobStatus.SUCCEEDED:
            print(f"job {job['status']}: {(job.get('error') or {}).get('message')}", file=sys.stderr)
            return 1
        for warning in job.get("warnings") or []:
            print(f"warning: {warning}", file=sys.stderr)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        items = job["result"].get("images") or [job["result"]["video"]]
        for item in items:
            name = item["url"].rsplit("/", 1)[-1]
            path = out / f"{job['id']}-{name}"
            path.write_bytes(client.get(item["url"]).raise_for_status().content)
            print(path)
    return 0


def _follow(client, job_id: str) -> dict:
    """Show a progress bar fed by the job's event stream; return the terminal JobView."""
    with client.stream("GET", f"/jobs/{job_id}/events") as stream:
        event = None
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data = json.loads(line[5:])
                if event == EventType.DONE:
                    print(_bar(data["progress"], data["status"]), end="", file=sys.stderr, flush=True)
                    return data
                print(_bar(data["progress"], data["status"]), end="", file=sys.stderr, flush=True)
    return client.get(f"/jobs/{job_id}").json()


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
    gen.add_argument("--url", default=None, help="the API's base URL (default: http://FRESCO_HOST:FRESCO_PORT)")
    gen.add_argument("--out", default=".", help="folder for the results")
    gen.add_argument("--api-key", default=None, help="an API key, sent as Authorization: Bearer")
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
    if args.command == "generate" and args.url is None:
        args.url = f"http://{settings.host}:{settings.port}"
    commands = {"up": cmd_up, "api": cmd_api, "worker": cmd_worker, "generate": cmd_generate,
                "hash-key": cmd_hash_key, "convert": cmd_convert, "webhooks": cmd_webhooks,
                "webhook-secret": cmd_webhook_secret}
    return commands[args.command](settings, args)


if __name__ == "__main__":
    sys.exit(main())
