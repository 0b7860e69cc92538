"""The chaos soak: `fresco up` under a mixed load from three API keys while its parts are killed, then a drain
and the checks that say nothing was lost, stuck, doubled or leaked.

The deployment: `fresco up` (its embedded Redis, one API process, `--workers` workers, on the tiny profile)
with the webhook dispatcher apart (`fresco webhooks`, the API's own off), in a temporary data directory.
Three clients, one per API key, keep a few jobs each in flight: a mix of every task at tiny scale (txt2img
with ControlNet or hires, SDXL with a LoRA, Turbo, img2img, inpaint, upscale, SVD, a training job now and
then), some with a webhook to a local receiver (which answers 503 with Retry-After for a while, or is down),
some canceled a moment after they were accepted. Each submit carries an Idempotency-Key, kept for its retries
(a 503 or 429 with Retry-After, an answer lost to a connection error). Meanwhile a worker is killed with
kill -9 every 30 s, the one that has run longest (`fresco up` restarts it; one worker is never killed, for
its memory figures), the embedded Redis every 2 minutes (`fresco up` restarts it), and the webhook
dispatcher once (the soak starts it again); a shorter run kills more often (`plan_for`), none in its last
seconds. Once the time is up nothing new is sent, the faults stop, and the soak waits (bounded) for every job
to end and every webhook to arrive. Then it checks, and prints a table:

- every accepted job is terminal, and none failed but for a killed worker (`worker_lost`) or a cancel;
- every succeeded job's files fetch with their content type, images decode at the size asked, videos are
  there; no job has more output files than it made, no job id came back for two submits, and Redis holds no
  job that no client was answered with (5 % of submits drop their first answer on purpose and send again);
- every webhook event owed arrived: exactly once after de-duplication by `webhook-id` (`completed` once,
  `start` once per run), every id with one body, every signature valid, every job's webhook `delivered`;
- no 5xx answer but a 503 with Retry-After while Redis was down (or coming back), every request answered;
- the API's and the spared worker's memory (RSS) at the end within a tolerance of their figure a third in.

    .venv/bin/python bench/soak.py --minutes 10            # the run BENCHMARKS.md reports
    .venv/bin/python bench/soak.py --minutes 1.5 --profile small --workers 2 --in-flight 2 --rate 0.5 --json  # suite

Exit code 0 when every check passes. Per-key limits (`weight`, `max_queued`, ...) and `priority` are used
when this checkout's settings and schemas have them.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from PIL import Image  # noqa: E402

from bench.common import children, free_port, percentile, rss_bytes  # noqa: E402
from tests.stack import tiny_models_file  # noqa: E402
from tests.webhook_receiver import Receiver  # noqa: E402

DONE = {"succeeded", "failed", "canceled"}
TENANTS = ("alice", "bob", "carol")
# The small profile: a model per task family, so that a worker starts in a few seconds (the suite's run).
SMALL_PROFILE = ("tiny-sd", "tiny-sdxl", "tiny-turbo", "tiny-svd")
LOST_ANSWER_SHARE = 0.05  # submits whose first answer the client does not wait for (then sent again)
IMPATIENT = httpx.Timeout(30, read=0.01)  # their first attempt's timeout
LOST_ON_PURPOSE = "lost on purpose"
REDIS_GRACE_S = 10.0  # after Redis answers again, the API may still answer 503 this long
DISPATCHER_DOWN_S = 3.0  # a killed dispatcher is started again this long after (deliveries owed wait in Redis)
MEMORY_TOLERANCE = {"api": (0.10, 40 << 20), "worker": (0.15, 200 << 20)}  # growth allowed: fraction, bytes


# ---------------------------------------------------------------- the plan

@dataclass
class Plan:
    duration_s: float
    worker_every_s: float  # a worker kill -9 this often
    redis_every_s: float  # the embedded Redis kill -9 this often (0: never)
    dispatcher_kill_at_s: float  # the webhook dispatcher's one kill (0: never)
    workers: int = 3
    in_flight: int = 3  # jobs each client keeps unfinished
    rate: float = 0.0  # submits per second each client sends at most (0: as fast as in_flight lets it)
    profile: str = "full"
    cancel_share: float = 0.12
    webhook_share: float = 0.4
    train_share: float = 0.03
    drain_s: float = 240.0
    seed: int = 1

    @property
    def quiet_tail_s(self) -> float:
        """No fault in the load's last seconds: the last one is over before the drain."""
        return min(15.0, self.duration_s / 6)

    def fault_times(self) -> list[tuple[float, str]]:
        """When each fault happens, from the start of the load."""
        end = self.duration_s - self.quiet_tail_s
        times = []
        if self.worker_every_s:
            t = self.worker_every_s * 2 / 3
            while t < end:
                times.append((t, "worker"))
                t += self.worker_every_s
        if self.redis_every_s:
            t = self.redis_every_s
            while t < end:
                times.append((t, "redis"))
                t += self.redis_every_s
        if 0 < self.dispatcher_kill_at_s < end:
            times.append((self.dispatcher_kill_at_s, "dispatcher"))
        return sorted(times)


def plan_for(minutes: float, *, without: set[str] = frozenset(), **fields) -> Plan:
    """A plan for `minutes` of load; the faults' intervals shrink with a short run (90 s: a worker killed
    twice, Redis once, the dispatcher once; 10 minutes: a worker 19 times, Redis 4 times, the dispatcher once)."""
    duration = minutes * 60
    worker = min(30.0, duration / 3)
    redis = min(120.0, duration / 2)
    return Plan(duration, 0 if "workers" in without else worker, 0 if "redis" in without else redis,
                0 if "dispatcher" in without else duration * 0.3,
                drain_s=max(120.0, duration * 0.4), **fields)


# ---------------------------------------------------------------- the jobs

def png_data_url(width: int, height: int, color=(180, 40, 40)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def mask_data_url(width: int, height: int) -> str:
    img = Image.new("L", (width, height), 0)
    img.paste(255, (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@dataclass
class Spec:
    """A request and what its job must make: `count` images (or a video, or an adapter) of `size`."""

    kind: str  # a label: the task, and its variant
    body: dict
    output: str = "images"  # images | video | adapter
    count: int = 1
    size: tuple[int, int] | None = None  # None: as the result reports it
    route: str = "/generate"


class Mix:
    """Random tiny requests of every task (the profile's models only)."""

    def __init__(self, rng: random.Random, profile: str):
        self.rng, self.full = rng, profile == "full"
        self.image = png_data_url(96, 72)
        self.mask = mask_data_url(96, 72)
        self.control = png_data_url(256, 256, (20, 20, 20))
        self.small = png_data_url(64, 48, (30, 160, 60))
        self.frame = png_data_url(64, 64, (40, 40, 200))

    def fmt(self) -> str:
        return self.rng.choice(("png", "png", "jpeg", "webp"))

    def spec(self, train_share: float) -> Spec:
        if self.rng.random() < train_share:
            return self.train()
        make = self.rng.choice((self.txt2img, self.txt2img_control, self.txt2img_hires, self.sdxl, self.turbo,
                                self.turbo, self.img2img, self.inpaint, self.upscale, self.svd))
        return make()

    def _seed(self) -> int:
        return self.rng.randrange(2**32)

    def txt2img(self) -> Spec:
        n = self.rng.choice((1, 1, 2))
        model = self.rng.choice(("tiny-sd", "tiny-sd3", "tiny-flux")) if self.full else "tiny-sd"
        body = {"task": "txt2img", "model": model, "prompt": "a lighthouse", "width": 256, "height": 256,
                "steps": 2, "num_images": n, "seed": self._seed(), "output_format": self.fmt()}
        if model != "tiny-sd":
            body["width"] = body["height"] = 256  # multiples of 16
        return Spec(f"txt2img/{model}", body, count=n, size=(256, 256))

    def txt2img_control(self) -> Spec:
        body = {"task": "txt2img", "model": "tiny-sd", "prompt": "a tower", "width": 256, "height": 256, "steps": 2,
                "seed": self._seed(), "control": [{"model": "tiny-sd-canny", "image": self.control}]}
        return Spec("txt2img/controlnet", body, size=(256, 256))

    def txt2img_hires(self) -> Spec:
        body = {"task": "txt2img", "model": "tiny-sd", "prompt": "a bridge", "width": 256, "height": 256, "steps": 1,
                "seed": self._seed(), "hires": {"scale": 1.5, "upscaler": self.rng.choice(("latent", "lanczos")),
                                                "steps": 2}}
        return Spec("txt2img/hires", body, size=(384, 384))

    def sdxl(self) -> Spec:
        body = {"task": "sdxl", "prompt": "a harbour", "width": 256, "height": 256, "steps": 2,
                "refiner": self.rng.random() < 0.5, "seed": self._seed(), "output_format": self.fmt()}
        if self.rng.random() < 0.3:
            body["loras"] = [{"name": "tiny-style", "scale": 0.7}]
        return Spec("sdxl", body, size=(256, 256))

    def turbo(self) -> Spec:
        n = self.rng.choice((1, 1, 2, 3))
        body = {"task": "turbo", "prompt": "a red fox", "width": 256, "height": 256, "steps": 1, "num_images": n,
                "seed": self._seed(), "output_format": self.fmt()}
        return Spec("turbo", body, count=n, size=(256, 256))

    def img2img(self) -> Spec:
        model = self.rng.choice((None, "tiny-turbo"))
        body = {"task": "img2img", "prompt": "a watercolor", "image": self.image, "steps": 2, "strength": 0.5,
                "seed": self._seed()}
        if model:
            body["model"] = model
        return Spec(f"img2img/{model or 'default'}", body, size=(96, 72))

    def inpaint(self) -> Spec:
        body = {"task": "inpaint", "prompt": "a red door", "image": self.image, "mask": self.mask, "steps": 2,
                "seed": self._seed()}
        return Spec("inpaint", body, size=(96, 72))

    def upscale(self) -> Spec:
        model = self.rng.choice(("lanczos", "tiny-esrgan")) if self.full else "lanczos"
        body = {"task": "upscale", "image": self.small, "model": model, "scale": 2.0, "output_format": self.fmt()}
        return Spec(f"upscale/{model}", body, size=(128, 96))

    def svd(self) -> Spec:
        fmt = self.rng.choice(("mp4", "gif", "webp"))
        body = {"task": "svd", "image": self.frame, "width": 128, "height": 64, "num_frames": 2, "steps": 1,
                "decode_chunk_size": 2, "fps": 4, "output_format": fmt, "seed": self._seed()}
        return Spec(f"svd/{fmt}", body, output="video", size=(128, 64))

    def train(self) -> Spec:
        images = [{"image": png_data_url(64, 64, (200 + i * 10, 20, 20)), "caption": "a red square"} for i in range(2)]
        # A name of its own: an adapter replaced by a later job of the same name would no longer fetch.
        body = {"model": "tiny-sd", "name": f"soak-{self.rng.randrange(16**8):08x}", "images": images,
                "steps": 2, "resolution": 256, "rank": 2, "checkpoint_every": 1, "seed": self._seed(),
                "validation": {"every": 0, "prompt": "a red square"}}
        return Spec("train", body, output="adapter", route="/train")


# ---------------------------------------------------------------- what the soak records

@dataclass
class Call:
    t: float  # when it was sent, in seconds since the load started
    t_end: float  # when its answer came (or did not)
    route: str
    status: int | None  # None: no answer (connection error, timeout)
    retry_after: bool
    detail: str = ""


@dataclass
class Job:
    id: str
    tenant: str
    idempotency_key: str
    spec: Spec
    accepted_t: float
    webhook_events: list[str] | None = None
    retries: int = 0
    cancel_at: float | None = None  # monotonic time to send the DELETE
    cancel_status: int | None = None  # the DELETE's answer (202, or 409: it had ended)
    cancel_sent: bool = False  # a DELETE was sent (its answer may have been lost)
    view: dict | None = None  # the latest JobView read

    @property
    def terminal(self) -> bool:
        return self.view is not None and self.view["status"] in DONE


@dataclass
class Fault:
    kind: str
    t: float
    pid: int | None = None
    recovered_t: float | None = None  # a new process (worker: a new child of `fresco up`; Redis: answering with a
    # new pid; dispatcher: started again by the soak)
    note: str = ""


@dataclass
class Record:
    calls: list[Call] = field(default_factory=list)
    jobs: dict[str, Job] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)  # submits answered with another 4xx, or never accepted
    duplicate_ids: list[str] = field(default_factory=list)  # one id answered for two Idempotency-Keys
    faults: list[Fault] = field(default_factory=list)
    receiver_modes: list[tuple[float, str]] = field(default_factory=list)
    memory: dict[str, list[tuple[float, int]]] = field(default_factory=lambda: defaultdict(list))
    pids: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))  # api, spared worker: every pid
    lock: threading.Lock = field(default_factory=threading.Lock)


# ---------------------------------------------------------------- the deployment

class Up:
    """`fresco up` in a temporary data directory, and a `fresco webhooks` dispatcher beside it."""

    def __init__(self, plan: Plan, env: dict[str, str], data_dir: Path):
        self.data_dir, self.port = data_dir, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "FRESCO_DATA_DIR": str(data_dir), "FRESCO_PORT": str(self.port),
                    "FRESCO_HOST": "127.0.0.1", "FRESCO_WORKER_METRICS_PORT": "0", "FRESCO_TORCH_THREADS": "1",
                    "FRESCO_LOG_LEVEL": "WARNING", "FRESCO_WEBHOOK_DISPATCHER": "false", **env}
        for name in ("FRESCO_REDIS_URL", "PROMETHEUS_MULTIPROC_DIR"):
            self.env.pop(name, None)
        if plan.profile == "small":
            self.env["FRESCO_MODELS_FILE"] = str(tiny_models_file(data_dir / "models.yaml", SMALL_PROFILE))
        self.log_path = data_dir / "up.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", "up", "--workers", str(plan.workers),
                                          "--grace", "10"], env=self.env, cwd=ROOT, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_stop_with_parent)
        self.dispatcher: subprocess.Popen | None = None
        self.redis_url = ""

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if not self.redis_url:
                for line in self.log_path.read_text(errors="replace").splitlines():
                    if line.startswith("fresco: embedded Redis on "):
                        self.redis_url = line.split()[4]
            try:
                if self.redis_url and httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"`fresco up` did not become ready in {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def children(self, role: str) -> list[int]:
        """The pids of `fresco up`'s live children of `role` (api, worker), oldest first."""
        return sorted(pid for pid, argv in children(self.proc.pid).items()
                      if "service.cli" in argv[:-1] and argv[argv.index("service.cli") + 1] == role)

    def redis(self):
        from service.redis import sync_client

        return sync_client(self.redis_url, socket_timeout=2)

    def redis_pid(self) -> int:
        return int(self.redis().info("server")["process_id"])

    def start_dispatcher(self) -> None:
        with open(self.data_dir / "webhooks.log", "ab") as log:
            self.dispatcher = subprocess.Popen([sys.executable, "-m", "service.cli", "webhooks"],
                                               env={**self.env, "FRESCO_REDIS_URL": self.redis_url}, cwd=ROOT,
                                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                               preexec_fn=_stop_with_parent)

    def stop(self) -> None:
        if self.dispatcher and self.dispatcher.poll() is None:
            self.dispatcher.terminate()
            _wait(self.dispatcher, 15)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            _wait(self.proc, 60)


def _stop_with_parent() -> None:
    """In a child, before exec: SIGTERM it when the soak dies (killed by a test's timeout, say), so that no
    `fresco up` outlives it (Linux; elsewhere nothing)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _wait(proc: subprocess.Popen, grace: float) -> None:
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def key_settings(keys: dict[str, str], limits: dict[str, dict]) -> tuple[str, bool]:
    """FRESCO_API_KEYS for `keys` (name -> key), with each key's `limits` when this checkout's settings
    take them (the JSON object form); else the plain digests. Also whether the limits were taken."""
    from service.api.auth import digest
    from service.settings import Settings

    plain = {name: digest(key) for name, key in keys.items()}
    limited = json.dumps({name: {"digest": hexdigest, **limits.get(name, {})} for name, hexdigest in plain.items()})
    try:
        Settings(api_keys=limited)
        return limited, True
    except Exception:  # noqa: BLE001 - settings without per-key limits (a ValidationError, a ValueError)
        return json.dumps(plain), False


def takes_priority() -> bool:
    from service.api.schemas import TurboRequest

    return "priority" in TurboRequest.model_fields


# ---------------------------------------------------------------- clients

class Api:
    """An HTTP client of one key that records every answer (and every lost one) in `record.calls`."""

    def __init__(self, url: str, key: str, record: Record, t0: float):
        self.http = httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {key}"})
        self.record, self.t0 = record, t0

    def call(self, method: str, path: str, route: str, **kwargs) -> httpx.Response | None:
        t = time.monotonic() - self.t0
        try:
            r = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            why = LOST_ON_PURPOSE if kwargs.get("timeout") is IMPATIENT else type(e).__name__
            self.record.calls.append(Call(t, time.monotonic() - self.t0, route, None, False, why))
            return None
        detail = r.text[:300] if r.status_code >= 500 or r.status_code in (400, 404, 422) else ""
        self.record.calls.append(Call(t, time.monotonic() - self.t0, route, r.status_code, "retry-after" in r.headers,
                                      detail))
        return r

    def close(self) -> None:
        self.http.close()


def retry_wait(r: httpx.Response | None) -> float:
    if r is None:
        return 0.5
    try:
        return min(5.0, max(0.2, float(r.headers.get("retry-after", "1"))))
    except ValueError:
        return 1.0


class Tenant(threading.Thread):
    """One API key's client: keeps `plan.in_flight` jobs unfinished, cancels some, polls its jobs."""

    def __init__(self, name: str, key: str, soak: "Soak"):
        super().__init__(name=f"tenant-{name}", daemon=True)
        self.tenant, self.soak = name, soak
        self.rng = random.Random(f"{soak.plan.seed}-{name}")
        self.mix = Mix(self.rng, soak.plan.profile)
        self.api = Api(soak.up.url, key, soak.record, soak.t0)
        self.mine: list[Job] = []
        self.next_submit = 0.0

    def run(self) -> None:
        plan = self.soak.plan
        while not self.soak.load_over.is_set():
            open_jobs = [j for j in self.mine if not j.terminal]
            if len(open_jobs) < plan.in_flight and time.monotonic() >= self.next_submit:
                self.submit(self.mix.spec(plan.train_share))
                self.next_submit = time.monotonic() + (1 / plan.rate if plan.rate else 0)
            self.cancel_due()
            self.poll(open_jobs)
            self.soak.load_over.wait(0.3)

    def body_for(self, spec: Spec) -> tuple[dict, list[str] | None, int]:
        body = dict(spec.body)
        if spec.route == "/generate" and self.rng.random() < 0.3:
            body["retries"] = 1
        if self.soak.priorities:
            allowed = ("high", "normal", "low") if self.tenant == "alice" else ("normal", "low")
            body["priority"] = self.rng.choice(allowed)
        events = None
        if self.soak.receiver is not None and self.rng.random() < self.soak.plan.webhook_share:
            events = self.rng.choice((["completed"], ["start", "completed"], ["start", "progress", "completed"],
                                      ["start"]))
            query = "?token=soak-secret" if self.rng.random() < 0.5 else ""
            body["webhook"] = self.soak.receiver.url + query
            body["webhook_events_filter"] = events
        return body, events, body.get("retries", 2 if spec.route == "/train" else 0)

    def submit(self, spec: Spec) -> None:
        """Until accepted, with one Idempotency-Key; now and then the first answer is lost on purpose (the
        client stops waiting for it after 10 ms), as a dropped connection would lose it."""
        body, events, retries = self.body_for(spec)
        key = uuid.uuid4().hex
        deadline = time.monotonic() + 120
        impatient = self.rng.random() < LOST_ANSWER_SHARE
        while time.monotonic() < deadline:
            timeout = IMPATIENT if impatient else httpx.USE_CLIENT_DEFAULT
            impatient = False
            r = self.api.call("POST", spec.route, "POST " + spec.route, json=body, headers={"Idempotency-Key": key},
                              timeout=timeout)
            if r is not None and r.status_code in (200, 201, 202):
                self.accepted(r.json(), spec, key, events, retries)
                return
            if r is not None and r.status_code not in (409, 429, 503):
                self.soak.record.rejected.append(f"{spec.kind}: {r.status_code} {r.text[:300]}")
                return
            time.sleep(retry_wait(r))
        self.soak.record.rejected.append(f"{spec.kind}: not accepted in 120 s (Idempotency-Key {key})")

    def accepted(self, view: dict, spec: Spec, key: str, events: list[str] | None, retries: int) -> None:
        record = self.soak.record
        with record.lock:
            if view["id"] in record.jobs:
                record.duplicate_ids.append(view["id"])
                return
            job = Job(view["id"], self.tenant, key, spec, time.monotonic() - self.soak.t0, events, retries, view=view)
            if self.rng.random() < self.soak.plan.cancel_share:
                job.cancel_at = time.monotonic() + self.rng.uniform(0, 3)
            record.jobs[job.id] = job
        self.mine.append(job)

    def cancel_due(self) -> None:
        now = time.monotonic()
        for job in self.mine:
            if job.cancel_at is not None and job.cancel_status is None and now >= job.cancel_at:
                job.cancel_sent = True
                r = self.api.call("DELETE", f"/jobs/{job.id}", "DELETE /jobs/{id}")
                if r is not None and r.status_code in (202, 409):
                    job.cancel_status = r.status_code
                else:
                    job.cancel_at = now + retry_wait(r)

    def poll(self, jobs: list[Job]) -> None:
        for job in jobs:
            r = self.api.call("GET", f"/jobs/{job.id}", "GET /jobs/{id}")
            if r is not None and r.status_code == 200:
                job.view = r.json()
            elif r is not None and r.status_code == 404:
                job.view = {"status": "lost"}  # its record is gone: lost


# ---------------------------------------------------------------- faults

class Helper(threading.Thread):
    """A thread of the soak's (`name`), until the load is over, with its own seeded random numbers."""

    def __init__(self, soak: "Soak", name: str):
        super().__init__(name=name, daemon=True)
        self.soak = soak
        self.rng = random.Random(f"{soak.plan.seed}-{name}")


class Chaos(Helper):
    """Kills at the plan's times: a worker (never the spared one), the embedded Redis, the dispatcher."""

    def __init__(self, soak: "Soak"):
        super().__init__(soak, "chaos")

    def run(self) -> None:
        for at, kind in self.soak.plan.fault_times():
            if self.soak.load_over.wait(max(0.0, self.soak.t0 + at - time.monotonic())):
                return
            getattr(self, f"kill_{kind}")()

    def now(self) -> float:
        return time.monotonic() - self.soak.t0

    def kill_worker(self) -> None:
        up, spared = self.soak.up, self.soak.spared_worker
        victims = [pid for pid in up.children("worker") if pid != spared]
        if not victims:
            self.soak.record.faults.append(Fault("worker", self.now(), note="no worker to kill (still restarting)"))
            return
        pid = victims[0]  # the one that has run longest: with several, each lives a few kill intervals
        os.kill(pid, signal.SIGKILL)
        fault = Fault("worker", self.now(), pid)
        self.soak.record.faults.append(fault)
        threading.Thread(target=self.watch_worker, args=(fault, set(up.children("worker"))), daemon=True).start()

    def watch_worker(self, fault: Fault, before: set[int]) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if set(self.soak.up.children("worker")) - before - {fault.pid}:
                fault.recovered_t = self.now()
                return
            time.sleep(0.2)

    def kill_redis(self) -> None:
        up = self.soak.up
        try:
            pid = up.redis_pid()
        except Exception as e:  # noqa: BLE001 - Redis not answering: nothing to kill
            self.soak.record.faults.append(Fault("redis", self.now(), note=f"not killed: {type(e).__name__}"))
            return
        fault = Fault("redis", self.now(), pid)
        os.kill(pid, signal.SIGKILL)
        self.soak.record.faults.append(fault)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not self.soak.load_over.is_set():
            try:
                if up.redis_pid() != pid:
                    fault.recovered_t = self.now()
                    return
            except Exception:  # noqa: BLE001 - still down
                pass
            time.sleep(0.2)
        fault.note = "not back in 60 s"

    def kill_dispatcher(self) -> None:
        up = self.soak.up
        pid = up.dispatcher.pid
        up.dispatcher.kill()
        up.dispatcher.wait()
        self.soak.record.faults.append(Fault("dispatcher", self.now(), pid))  # the soak's main loop restarts it


class FlakyReceiver(Helper):
    """Switches the webhook receiver between answering 200, answering 503 with Retry-After, and being down."""

    def __init__(self, soak: "Soak"):
        super().__init__(soak, "receiver")

    def run(self) -> None:
        receiver = self.soak.receiver
        while not self.soak.load_over.wait(self.rng.uniform(3, 8)):
            mode = self.rng.choices(("ok", "503", "down"), (0.6, 0.25, 0.15))[0]
            self.set(receiver, mode)
        self.set(receiver, "ok")

    def set(self, receiver: Receiver, mode: str) -> None:
        if mode == "down":
            receiver.stop()
        else:
            if receiver._httpd is None:
                receiver.start()
            receiver.answer(200) if mode == "ok" else receiver.answer(503, retry_after=1)
        self.soak.record.receiver_modes.append((time.monotonic() - self.soak.t0, mode))


class Memory(Helper):
    """RSS of the API and the spared worker every 2 s, and every pid each had."""

    def __init__(self, soak: "Soak"):
        super().__init__(soak, "memory")

    def run(self) -> None:
        record = self.soak.record
        while not self.soak.load_over.wait(2.0):
            t = time.monotonic() - self.soak.t0
            for role, pid in (("api", self.soak.api_pid()), ("worker", self.soak.spared_worker)):
                if pid is None:
                    continue
                if pid not in record.pids[role]:
                    record.pids[role].append(pid)
                try:
                    record.memory[role].append((t, rss_bytes(pid)))
                except OSError:
                    pass  # it died: its pids show it


# ---------------------------------------------------------------- the run

class Soak:
    def __init__(self, plan: Plan, data_dir: Path, *, log=print):
        self.plan, self.data_dir, self.log = plan, data_dir, log
        self.record = Record()
        self.load_over = threading.Event()
        self.keys = {name: f"soak-{name}-{uuid.uuid4().hex}" for name in TENANTS}
        limits = {"alice": {"weight": 2, "max_priority": "high"}, "bob": {"max_priority": "normal"},
                  "carol": {"max_priority": "normal", "max_queued": 1, "max_running": 1}}  # 429s to retry
        api_keys, self.limits = key_settings(self.keys, limits)
        self.priorities = takes_priority()
        from service.webhooks import signing

        self.secret = signing.new_secret()
        self.receiver: Receiver | None = Receiver(self.secret) if plan.webhook_share > 0 else None
        env = {"FRESCO_API_KEYS": api_keys, "FRESCO_RATE_LIMIT_PER_MINUTE": "0",
               "FRESCO_WEBHOOK_SECRET": self.secret, "FRESCO_WEBHOOK_ALLOW_PRIVATE": "true",
               "FRESCO_WEBHOOK_BACKOFF_S": "0.5", "FRESCO_WEBHOOK_TIMEOUT_S": "3",
               "FRESCO_MAX_ADAPTERS_PER_KEY": "10000"}
        self.up = Up(plan, env, data_dir)
        self.t0 = time.monotonic()
        self.spared_worker: int | None = None

    def api_pid(self) -> int | None:
        pids = self.up.children("api")
        return pids[0] if pids else None

    def run(self) -> dict:
        plan, up = self.plan, self.up
        started = time.monotonic()
        up.wait_ready(180)
        up.start_dispatcher()
        workers = up.children("worker")
        self.spared_worker = workers[0]
        self.log(f"soak: `fresco up` ready in {time.monotonic() - started:.1f}s ({len(workers)} workers, "
                 f"{plan.profile} profile, Redis {up.redis_url}); {plan.duration_s:.0f}s of load, faults at "
                 + ", ".join(f"{t:.0f}s {k}" for t, k in plan.fault_times()))
        self.t0 = time.monotonic()
        tenants = [Tenant(name, key, self) for name, key in self.keys.items()]
        helpers = [Chaos(self), Memory(self)] + ([FlakyReceiver(self)] if self.receiver else [])
        for thread in tenants + helpers:
            thread.start()
        end = self.t0 + plan.duration_s
        while time.monotonic() < end:
            time.sleep(0.2)
            self.restart_dispatcher(after_s=DISPATCHER_DOWN_S)
        self.load_over.set()
        load_end = time.monotonic() - self.t0
        for thread in tenants + helpers:
            thread.join(90)
        self.restart_dispatcher(after_s=0)
        drain = self.drain(tenants)
        for tenant in tenants:
            tenant.api.close()
        return {"load_s": load_end, "drain_s": drain}

    def restart_dispatcher(self, after_s: float) -> None:
        """Start the dispatcher again `after_s` seconds after it was killed (here, in the main thread: a child
        started by another thread would be stopped when that thread ends, `_stop_with_parent`)."""
        if self.up.dispatcher.poll() is None:
            return
        fault = next((f for f in reversed(self.record.faults) if f.kind == "dispatcher"), None)
        if fault is None or time.monotonic() - self.t0 - fault.t >= after_s:
            self.up.start_dispatcher()
            if fault is not None and fault.recovered_t is None:
                fault.recovered_t = time.monotonic() - self.t0

    def drain(self, tenants: list[Tenant]) -> float:
        """Until every job ended and every webhook owed was delivered, at most `plan.drain_s`."""
        start = time.monotonic()
        deadline = start + self.plan.drain_s
        by_tenant = {t.tenant: t for t in tenants}

        while time.monotonic() < deadline:
            pending = [j for j in list(self.record.jobs.values()) if not j.terminal or undelivered(j)]
            if not pending:
                break
            for job in pending:
                by_tenant[job.tenant].poll([job])
            time.sleep(1.0)
        return time.monotonic() - start

    def stop(self) -> None:
        self.up.stop()
        if self.receiver:
            self.receiver.stop()


# ---------------------------------------------------------------- the checks

@dataclass
class Check:
    name: str
    ok: bool
    figure: str
    problems: list[str] = field(default_factory=list)


def redis_windows(faults: list[Fault], end: float) -> list[tuple[float, float]]:
    return [(f.t, (f.recovered_t if f.recovered_t is not None else end) + REDIS_GRACE_S)
            for f in faults if f.kind == "redis" and f.pid is not None]


def check_terminal(jobs: list[Job]) -> Check:
    stuck = [f"{j.id} ({j.spec.kind}, {j.tenant}): {(j.view or {}).get('status')}" for j in jobs if not j.terminal]
    return Check("every accepted job ended", not stuck, f"{len(jobs) - len(stuck)}/{len(jobs)} terminal", stuck)


def check_outcomes(jobs: list[Job]) -> Check:
    """Failures only from a killed worker (`worker_lost`); `canceled` only for a job the soak canceled."""
    counts: Counter = Counter()
    problems = []
    for j in jobs:
        view = j.view or {}
        status, error = view.get("status"), (view.get("error") or {})
        counts[status if status != "failed" else f"failed/{error.get('code')}"] += 1
        if status == "failed" and error.get("code") != "worker_lost":
            problems.append(f"{j.id} ({j.spec.kind}): failed {error.get('code')}: {error.get('message', '')[:200]}")
        if status == "canceled" and not j.cancel_sent:
            problems.append(f"{j.id} ({j.spec.kind}): canceled, but the soak never canceled it")
        if status == "lost":
            problems.append(f"{j.id} ({j.spec.kind}, {j.tenant}): accepted at {j.accepted_t:.1f}s, then 404")
    figure = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    return Check("no job lost or failed but by a kill", not problems, figure, problems)


def expected_content_type(spec: Spec) -> str:
    fmt = spec.body.get("output_format") or ("mp4" if spec.output == "video" else "png")
    return {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "gif": "image/gif",
            "mp4": "video/mp4"}[fmt]


def check_results(jobs: list[Job], url: str, keys: dict[str, str], results_dir: Path) -> tuple[Check, Check]:
    """Every succeeded job's files fetch with the right type and size; no job has more files than it made."""
    problems, extra, fetched = [], [], 0
    clients = {name: httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {key}"})
               for name, key in keys.items()}
    try:
        for j in jobs:
            view = j.view or {}
            on_disk = sorted(p.name for p in (results_dir / j.id).glob("*")) if (results_dir / j.id).is_dir() else []
            outputs = [n for n in on_disk if n.split(".")[0].isdigit() or n.startswith("video.")]
            if view.get("status") != "succeeded":
                continue
            result = view.get("result") or {}
            items = result.get("images") or []
            expected = j.spec.count if j.spec.output == "images" else 1
            if j.spec.output == "images" and len(items) != expected:
                problems.append(f"{j.id} ({j.spec.kind}): {len(items)} images, asked {expected}")
            if j.spec.output != "adapter" and len(outputs) != expected:
                extra.append(f"{j.id} ({j.spec.kind}): files {on_disk}, made {expected}")
            client = clients[j.tenant]
            if j.spec.output == "video":
                items = [result.get("video")] if result.get("video") else []
                if not items:
                    problems.append(f"{j.id} ({j.spec.kind}): no video in the result")
            if j.spec.output == "adapter":
                adapter = result.get("adapter")
                if not adapter:
                    problems.append(f"{j.id} (train): no adapter in the result")
                else:
                    r = client.get(adapter["url"])
                    fetched += 1
                    if r.status_code != 200 or len(r.content) != adapter["size_bytes"]:
                        problems.append(f"{j.id} (train): adapter {r.status_code}, {len(r.content)} bytes")
            for item in items:
                r = client.get(item["url"])
                fetched += 1
                problems += _file_problems(j, item, r)
    finally:
        for c in clients.values():
            c.close()
    return (Check("succeeded jobs' files fetch right", not problems, f"{fetched} files fetched", problems),
            Check("no job has two results", not extra, f"{len(extra)} jobs with other files", extra))


def _file_problems(j: Job, item: dict, r: httpx.Response) -> list[str]:
    where = f"{j.id} ({j.spec.kind}) {item['url'].split('?')[0].rsplit('/', 1)[-1]}"
    if r.status_code != 200 or not r.content:
        return [f"{where}: {r.status_code}, {len(r.content)} bytes"]
    ctype = r.headers.get("content-type", "")
    if j.spec.output != "adapter" and j.spec.kind != "train" and ctype != expected_content_type(j.spec):
        return [f"{where}: {ctype}, asked {expected_content_type(j.spec)}"]
    if ctype == "video/mp4":
        return []  # non-empty, the right type
    try:
        size = Image.open(io.BytesIO(r.content)).size
    except Exception as e:  # noqa: BLE001 - any decoding failure is the finding
        return [f"{where}: does not decode ({type(e).__name__})"]
    want = j.spec.size or (item["width"], item["height"])
    if size != want or size != (item["width"], item["height"]):
        return [f"{where}: {size[0]}x{size[1]}, asked {want[0]}x{want[1]}, reported {item['width']}x{item['height']}"]
    return []


def stored_jobs(up: Up) -> dict[str, str]:
    """Every job record in Redis: id -> "task status" (the soak is the deployment's only client)."""
    from service.jobs import keys
    from service.storage.names import valid_job_id

    r = up.redis()
    prefix = keys.job("")
    ids = [k.decode()[len(prefix):] for k in r.scan_iter(match=keys.job("*"), count=1000)]
    ids = [i for i in ids if valid_job_id(i)]
    return {i: " ".join(x.decode() if x else "?" for x in r.hmget(keys.job(i), "task", "status")) for i in ids}


def check_idempotency(record: Record, stored: dict[str, str]) -> Check:
    """No id answered to two submits, and no job made that no client heard of (a retried submit whose first
    answer was lost made a second job)."""
    problems = [f"job {i} answered to two submits" for i in record.duplicate_ids]
    problems += [f"job {i} ({what}) is in Redis, but no submit was answered with it"
                 for i, what in stored.items() if i not in record.jobs]
    lost_answers = sum(1 for c in record.calls if c.status is None and c.route.startswith("POST"))
    return Check("one job per submit (Idempotency-Key)", not problems,
                 f"{len(record.jobs)} jobs accepted, {len(stored)} in Redis; {lost_answers} submit answers lost "
                 f"and sent again", problems)


def check_rejected(record: Record) -> Check:
    return Check("every submit accepted", not record.rejected, f"{len(record.rejected)} not accepted",
                 record.rejected[:20])


def events_owed(job: Job) -> dict[str, tuple[int, int]]:
    """How many distinct deliveries (webhook-ids) of each event a job with a webhook is owed: at least, at most."""
    view = job.view or {}
    owed = {}
    for event in ("start", "progress", "completed"):
        if event not in job.webhook_events:
            owed[event] = (0, 0)
        elif event == "completed":
            owed[event] = (1, 1) if view.get("status") in DONE else (0, 1)
        elif event == "start":  # once per run: again when it runs again after its worker died
            owed[event] = (1 if view.get("started_at") else 0, 1 + job.retries)
        else:
            owed[event] = (0, 10**6)
    return owed


def undelivered(job: Job) -> bool:
    """A job with a webhook whose deliveries are not all done: unfinished, or owed one not yet delivered (a
    job owed none shows `delivered: false`)."""
    if job.webhook_events is None:
        return False
    owes = any(low for low, _ in events_owed(job).values())
    return not job.terminal or (owes and not ((job.view or {}).get("webhook") or {}).get("delivered"))


def check_webhooks(jobs: list[Job], receiver: Receiver | None) -> Check:
    if receiver is None:
        return Check("every webhook event arrived once", True, "no webhooks sent")
    with receiver.lock:
        received = list(receiver.received)
    problems = [f"{receiver.invalid} deliveries with a bad signature"] if receiver.invalid else []
    bodies: dict[str, set] = defaultdict(set)
    for x in received:
        bodies[x.id].add((x.data.get("id"), x.type, x.body))
    problems += [f"webhook-id {i} came with {len(v)} different events or bodies"
                 for i, v in bodies.items() if len(v) > 1]
    by_job: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for x in received:
        by_job[x.data.get("id")][x.type.removeprefix("job.")].add(x.id)
    hooked = [j for j in jobs if j.webhook_events is not None]
    for j in hooked:
        got = by_job.get(j.id, {})
        view = j.view or {}
        for event, (low, high) in events_owed(j).items():
            n = len(got.get(event, ()))
            if not low <= n <= high:
                problems.append(f"{j.id} ({j.spec.kind}, {view.get('status')}, events {j.webhook_events}): "
                                f"{n} distinct {event} deliveries, owed {low}..{high}")
        if j.terminal and undelivered(j):
            problems.append(f"{j.id} ({j.spec.kind}, {view.get('status')}, started {view.get('started_at')}): "
                            f"webhook not delivered by the end: {view.get('webhook')}")
    distinct = len(bodies)
    figure = f"{len(hooked)} jobs, {distinct} events, {len(received)} deliveries received"
    return Check("every webhook event arrived once", not problems, figure, problems)


def check_http(record: Record, end: float) -> Check:
    windows = redis_windows(record.faults, end)
    statuses = Counter(c.status for c in record.calls)
    problems = []
    allowed = 0
    for c in record.calls:
        if c.status is None and c.detail != LOST_ON_PURPOSE:
            problems.append(f"{c.t:.1f}s {c.route}: no answer in {c.t_end - c.t:.1f}s ({c.detail})")
        if c.status == 429 and not c.retry_after:
            problems.append(f"{c.t:.1f}s {c.route}: 429 without Retry-After")
        if c.status is None or c.status < 500:
            continue
        in_window = any(c.t <= b and c.t_end >= a for a, b in windows)  # it was in flight during one
        if c.status == 503 and c.retry_after and in_window:
            allowed += 1
            continue
        why = "without Retry-After" if c.status == 503 and not c.retry_after else \
            ("outside a Redis outage" if c.status == 503 else "")
        problems.append(f"{c.t:.1f}s {c.route}: {c.status} {why} {c.detail}".strip())
    figure = f"{len(record.calls)} requests, " + ", ".join(f"{k or 'no answer'}: {v}" for k, v in
                                                           sorted(statuses.items(), key=lambda kv: kv[0] or 0))
    return Check("no 5xx but 503 + Retry-After while Redis was down; every request answered", not problems,
                 f"{figure}; {allowed} 503 in outages", problems[:30])


def check_memory(record: Record, plan: Plan) -> list[Check]:
    checks = []
    for role, samples in (("api", record.memory.get("api", [])), ("worker", record.memory.get("worker", []))):
        pids = record.pids.get(role, [])
        after = [(t, rss) for t, rss in samples if t >= plan.duration_s / 3]
        name = f"{role} memory flat after warm-up" + (" (the spared worker)" if role == "worker" else "")
        if len(pids) > 1:
            checks.append(Check(name, False, "", [f"the {role} restarted: pids {pids}"]))
            continue
        if len(after) < 2:
            checks.append(Check(name, False, "", ["too few samples"]))
            continue
        warm, end = after[0][1], after[-1][1]
        fraction, slack = MEMORY_TOLERANCE[role]
        ok = end - warm <= max(warm * fraction, slack)
        peak = max(rss for _, rss in samples)
        figure = f"{warm / 2**20:.0f} MiB at {after[0][0]:.0f}s, {end / 2**20:.0f} MiB at the end " \
                 f"({(end - warm) / 2**20:+.0f} MiB), peak {peak / 2**20:.0f} MiB"
        checks.append(Check(name, ok, figure, [] if ok else [f"grew more than {fraction:.0%} or "
                                                               f"{slack / 2**20:.0f} MiB"]))
    return checks


def check_faults(record: Record, plan: Plan, up_exit: int | None) -> Check:
    problems = [] if up_exit is None else [f"`fresco up` exited (code {up_exit}) before the end"]
    parts = []
    for kind in ("worker", "redis", "dispatcher"):
        done = [f for f in record.faults if f.kind == kind]
        killed = [f for f in done if f.pid is not None]
        planned = sum(1 for _, k in plan.fault_times() if k == kind)
        back = [f.recovered_t - f.t for f in killed if f.recovered_t is not None]
        problems += [f"{f.kind} killed at {f.t:.1f}s (pid {f.pid}): {f.note or 'not back'}" for f in killed
                     if f.recovered_t is None]
        problems += [f"{f.kind} at {f.t:.1f}s: {f.note}" for f in done if f.pid is None and kind != "worker"]
        if planned:
            parts.append(f"{kind} {len(killed)}/{planned} killed" +
                         (f", restarted in {min(back):.1f}..{max(back):.1f}s" if back else ""))
    return Check("every killed part came back", not problems, "; ".join(parts) or "no faults", problems)


def log_errors(*paths: Path) -> list[str]:
    """Tracebacks and ERROR lines in the processes' output (shown, not a check: a killed part logs some)."""
    lines = []
    for path in paths:
        if path.exists():
            lines += [f"{path.name}: {line[:240]}" for line in path.read_text(errors="replace").splitlines()
                      if "Traceback" in line or " ERROR " in line or "CRITICAL" in line]
    return lines


def evaluate(soak: Soak, timing: dict) -> tuple[list[Check], dict]:
    record, plan = soak.record, soak.plan
    jobs = list(record.jobs.values())
    end = timing["load_s"] + timing["drain_s"]
    files, doubles = check_results(jobs, soak.up.url, soak.keys, soak.data_dir / "results")
    checks = [check_terminal(jobs), check_outcomes(jobs), check_rejected(record), files, doubles,
              check_idempotency(record, stored_jobs(soak.up)), check_webhooks(jobs, soak.receiver),
              check_http(record, end),
              *check_memory(record, plan), check_faults(record, plan, soak.up.proc.poll())]
    per_task = Counter(j.spec.kind for j in jobs)
    per_tenant = Counter(j.tenant for j in jobs)
    succeeded = Counter(j.tenant for j in jobs if (j.view or {}).get("status") == "succeeded")
    waits = defaultdict(list)  # seconds queued, per key: how fair share and the limits served each
    for j in jobs:
        queued = ((j.view or {}).get("timings") or {}).get("queue_s")
        if queued is not None:
            waits[j.tenant].append(queued)
    summary = {
        "ok": all(c.ok for c in checks), "minutes": plan.duration_s / 60, "profile": plan.profile,
        "workers": plan.workers, "load_s": round(timing["load_s"], 1), "drain_s": round(timing["drain_s"], 1),
        "accepted": len(jobs), "lost": sum(1 for j in jobs if (j.view or {}).get("status") == "lost"),
        "stuck": sum(1 for j in jobs if not j.terminal and (j.view or {}).get("status") != "lost"),
        "per_task": dict(sorted(per_task.items())), "per_tenant": dict(per_tenant), "succeeded": dict(succeeded),
        "queue_s": {k: {"p50": round(percentile(v, 50), 2), "p95": round(percentile(v, 95), 2)}
                    for k, v in waits.items()},
        "key_limits": soak.limits, "priorities": soak.priorities,
        "receiver_modes": dict(Counter(mode for _, mode in record.receiver_modes)),
        "faults": [{"kind": f.kind, "t": round(f.t, 1), "back_s": None if f.recovered_t is None else
                    round(f.recovered_t - f.t, 1), "note": f.note} for f in record.faults],
        "memory_mib": {role: [[round(t), round(rss / 2**20)] for t, rss in samples[::5]]
                       for role, samples in record.memory.items()},
        "checks": [{"name": c.name, "ok": c.ok, "figure": c.figure, "problems": c.problems[:20]} for c in checks],
        "log_errors": log_errors(soak.up.log_path, soak.data_dir / "webhooks.log")[:30],
    }
    return checks, summary


def print_table(checks: list[Check], summary: dict, out=sys.stdout) -> None:
    print(f"\nchaos soak: {summary['minutes']:.1f} min of load on the {summary['profile']} profile, "
          f"{summary['workers']} workers; drain {summary['drain_s']:.0f}s; {summary['accepted']} jobs accepted, "
          f"{summary['lost']} lost, {summary['stuck']} stuck", file=out)
    print(f"jobs per task: {summary['per_task']}", file=out)
    print("jobs per key (succeeded): " + ", ".join(f"{k} {v} ({summary['succeeded'].get(k, 0)})"
                                                   for k, v in summary["per_tenant"].items()) +
          f"; per-key limits {'on' if summary['key_limits'] else 'not in this checkout'}, priorities "
          f"{'on' if summary['priorities'] else 'not in this checkout'}", file=out)
    print("queued seconds per key (p50, p95): " + ", ".join(f"{k} {v['p50']}, {v['p95']}"
                                                          for k, v in summary["queue_s"].items()), file=out)
    width = max(len(c.name) for c in checks)
    print(f"\n{'check':<{width}}  result  figures", file=out)
    for c in checks:
        print(f"{c.name:<{width}}  {'ok' if c.ok else 'FAIL':<6}  {c.figure}", file=out)
        for problem in c.problems[:10]:
            print(f"{'':<{width}}          - {problem}", file=out)
        if len(c.problems) > 10:
            print(f"{'':<{width}}          - ... {len(c.problems) - 10} more", file=out)
    if summary["log_errors"]:
        print(f"\nerror lines in the processes' logs ({len(summary['log_errors'])} shown at most 30):", file=out)
        for line in summary["log_errors"][:10]:
            print(f"  {line}", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="of load, before the drain")
    parser.add_argument("--workers", type=int, default=3,
                        help="worker processes: one is never killed (its memory is measured), the others in turn")
    parser.add_argument("--profile", choices=("full", "small"), default="full",
                        help="the whole tiny profile, or one model per family (faster worker starts)")
    parser.add_argument("--in-flight", type=int, default=3, help="unfinished jobs each of the 3 clients keeps")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="submits per second each client sends at most (default: no limit but --in-flight)")
    parser.add_argument("--without", action="append", default=[], choices=("workers", "redis", "dispatcher"),
                        help="leave out one kind of fault (repeat)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the data directory (logs, results)")
    parser.add_argument("--json", action="store_true", help="end with a one-line JSON summary")
    args = parser.parse_args(argv)
    if args.workers < 2 and "workers" not in args.without:
        parser.error("--workers must be 2 or more: one is spared for its memory figures")
    plan = plan_for(args.minutes, without=set(args.without), workers=args.workers, profile=args.profile,
                    in_flight=args.in_flight, rate=args.rate, seed=args.seed)
    data_dir = Path(tempfile.mkdtemp(prefix="fresco-soak-"))
    soak = Soak(plan, data_dir, log=lambda msg: print(msg, flush=True))
    try:
        timing = soak.run()
        checks, summary = evaluate(soak, timing)
    except BaseException:
        print(soak.up.log_tail(), file=sys.stderr)
        raise
    finally:
        soak.stop()
        if args.keep:
            print(f"data, logs and results kept in {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    print_table(checks, summary)
    if args.json:
        print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
