"""Fresco's settings: one class, env prefix FRESCO_, validated at start.

Fresco's own configuration is read here only. Two process-level variables are read where they act,
on purpose: PROMETHEUS_MULTIPROC_DIR (prometheus_client's own, `service/api/metrics.py` and `fresco
api`) and the allocator and OpenMP variables an operator may set (`workers/tuning.py` leaves its
defaults alone when they are there).
"""

from __future__ import annotations

import json
import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.tasks import TASK_NAMES, TASKS


def _mapping(v, what: str):
    """A setting given as `name:value,name:value` or as a JSON object, read into a dict (other values as they are)."""
    if not isinstance(v, str):
        return v
    text = v.strip()
    if text.startswith("{"):
        return json.loads(text)
    pairs = [item.split(":", 1) for item in text.split(",") if item.strip()]
    if any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
        raise ValueError(f"give {what} as name:value pairs, comma-separated, or as a JSON object")
    return {name.strip(): value.strip() for name, value in pairs}


Priority = Literal["high", "normal", "low"]  # highest first (service/jobs/keys.py PRIORITIES)


class KeyLimits(BaseModel):
    """What one API key may take of the workers (fair share: service/jobs/scripts/lib/fair.lua)."""

    model_config = ConfigDict(extra="forbid")

    weight: float = Field(1.0, gt=0, le=1000, allow_inf_nan=False)  # its share against other keys' (default 1)
    max_priority: Priority = "high"  # the highest `priority` its requests may ask for
    max_queued: int = Field(0, ge=0)  # its jobs queued at once (0: no cap); over it a submit is 429
    max_running: int = Field(0, ge=0)  # its jobs running at once across all workers (0: no cap)


def _split_keys(raw):
    """FRESCO_API_KEYS as given -> (name -> digest, name -> limits). A key is its digest, or (JSON
    object form) an object with its `digest` and any of KeyLimits' fields."""
    keys = _mapping(raw, "API keys")
    if not isinstance(keys, dict):
        return keys, {}
    digests, limits = {}, {}
    for name, value in keys.items():
        if isinstance(value, dict):
            value = dict(value)
            digests[name] = value.pop("digest", "")
            limits[name] = value
        else:
            digests[name] = value
    return digests, limits


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FRESCO_", extra="ignore")

    # Where everything lives. With no Redis URL, Fresco starts (or joins) an embedded Redis here.
    redis_url: str | None = None
    data_dir: Path = Path(".fresco")
    results_dir: Path | None = None  # default: <data_dir>/results

    # S3-compatible object storage for inputs and results, used instead of results_dir when a bucket
    # is set (needs boto3: the `s3` extra). Keys: boto3's chain (AWS_*, IRSA, instance role) when unset.
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None  # where the API and workers reach it, e.g. http://minio:9000
    s3_public_endpoint_url: str | None = None  # where clients follow presigned URLs to; default: the above
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_prefix: str = ""  # key prefix inside the bucket, e.g. "fresco/"
    s3_presign_expires_s: int = Field(3600, ge=1, le=7 * 24 * 3600)  # SigV4's maximum is 7 days
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"  # "path" for MinIO and most self-hosted

    # API
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    public_url: str | None = None  # base of result URLs; default: the request's own base URL
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    # The most time a request body may take to arrive, from the app's first read to its last byte (a client
    # that trickles it gets 408): bounds how long a slow sender holds a connection. Raise it for large uploads
    # (a training set) over slow links.
    body_timeout_s: float = Field(60.0, gt=0, le=3600)
    max_pixels: int = Field(2048 * 2048, ge=64 * 64)  # width × height of outputs and input images
    max_image_bytes: int = Field(5 * 1024 * 1024, ge=1024)  # an input image, decoded (its base64 fits the body)
    allow_image_urls: bool = False  # fetch `image` URLs (public addresses only; see service/fetch.py)
    image_url_schemes: Annotated[list[str], NoDecode] = ["https"]
    image_url_allow_networks: Annotated[list[str], NoDecode] = []  # CIDRs exempt from the public-only rule
    image_url_timeout_s: float = Field(10.0, gt=0, le=120)
    # LoRAs given by URL in a request (`loras: [{"url"}]`), fetched by the worker through the same guard
    # as image URLs (the schemes and allowed networks above), safetensors only, cached on disk by digest.
    allow_adapter_urls: bool = False
    max_adapter_bytes: int = Field(1024 * 1024 * 1024, ge=1024)  # one adapter file
    adapter_url_timeout_s: float = Field(300.0, gt=0, le=3600)
    adapter_cache_bytes: int = Field(20 * 1024**3, ge=0)  # the worker's disk cache of fetched adapters (LRU)
    adapter_cache_dir: Path | None = None  # default: <data_dir>/adapters
    # Training (POST /train): the adapters one API key may keep, and the most bytes of one dataset (its
    # images, decoded; a JSON body may be a third larger, as base64).
    max_adapters_per_key: int = Field(50, ge=1)
    max_train_bytes: int = Field(200 * 1024 * 1024, ge=1024)
    train_processes: int = Field(1, ge=1, le=64)  # a trainer's processes per job (data parallel, one GPU each)
    job_ttl_s: int = Field(7 * 24 * 3600, ge=60)  # how long a finished job and its view are kept
    # API keys, as SHA-256 digests: "alice:<hex>,bob:<hex>" or a JSON object (`fresco hash-key` makes one),
    # whose values may also be objects with the key's `digest` and its limits (KeyLimits: weight,
    # max_priority, max_queued, max_running): {"alice": {"digest": "<hex>", "weight": 2, "max_running": 1}}.
    api_keys: Annotated[dict[str, str], NoDecode] = {}
    # Fair share between API keys (weighted by each key's `weight`); false: first come, first served
    # (priorities and the per-key caps still hold).
    fair_share: bool = True
    rate_limit_per_minute: int = Field(120, ge=0)  # POST /generate per key, when keys are on (0: none)
    # HMAC secret of result URLs. Unset: a random one, made once and kept in Redis (with FRESCO_REDIS_URL, so every
    # API process and dispatcher sharing it agrees) or under data_dir (the embedded Redis's single host).
    url_signing_secret: str | None = None
    result_url_ttl_s: int = Field(3600, ge=60)  # how long a signed result URL stays valid
    # Queued jobs per task beyond which POST /generate answers 503 (0: no cap). Held atomically.
    # A task the setting leaves out keeps its default from the task table (service/tasks.py).
    queue_cap: dict[str, int] = {name: task.queue_cap for name, task in TASKS.items()}
    idempotency_ttl_s: int = Field(24 * 3600, ge=60)  # how long an Idempotency-Key is remembered
    reaper_interval_s: float = Field(2.0, ge=0)  # how often each API process looks for lost jobs (0: never)

    # Webhooks (service/webhooks/): signed per Standard Webhooks with this secret ("whsec_" + base64 of
    # 24 to 64 random bytes; `fresco webhook-secret` makes one). Unset: requests naming a `webhook` are 422.
    webhook_secret: str | None = None
    # Private, loopback and link-local destinations and plain http, for local development and tests only.
    webhook_allow_private: bool = False
    # CIDRs exempt from webhooks' public-only rule (https still); never the cloud metadata addresses.
    webhook_allow_networks: Annotated[list[str], NoDecode] = []
    webhook_timeout_s: float = Field(10.0, gt=0, le=60)  # one delivery attempt
    webhook_retry_for_s: int = Field(6 * 3600, ge=3600)  # retried with backoff this long, then given up
    webhook_dispatcher: bool = True  # each API process also delivers webhooks (`fresco webhooks` does alone)
    webhook_max_in_flight: int = Field(64, ge=1, le=1024)  # deliveries one dispatcher attempts at once
    # Deliveries of one API key's jobs in flight at once over every dispatcher (0: no cap; none without keys):
    # one key's slow receivers cannot hold everyone's slots.
    webhook_max_in_flight_per_key: int = Field(8, ge=0, le=1024)
    # The first retry waits up to this long (full jitter), each next one up to twice as long (at most an hour).
    webhook_backoff_s: float = Field(5.0, gt=0, le=3600)
    webhook_progress_interval_s: float = Field(1.0, ge=0)  # the least time between two progress deliveries of a job

    # Compatible APIs (service/api/compat/): OpenAI Images and AUTOMATIC1111 answer when the job ends,
    # holding the request at most this long (then a timeout error, and the job is canceled).
    compat_wait_s: int = Field(600, ge=1, le=3600)
    # Model names OpenAI clients send, mapped to Fresco models: "dall-e-2:sdxl-turbo,gpt-image-1:sdxl-base-1.0"
    # or a JSON object. A client that names no model gets the first served of txt2img, sdxl and turbo.
    openai_model_aliases: Annotated[dict[str, str], NoDecode] = {}

    # Models: a YAML or TOML file, or the built-in `tiny` profile (random weights, CPU, noise images).
    models_file: Path | None = None

    # Worker
    worker_tasks: Annotated[list[str], NoDecode] = list(TASK_NAMES)
    # The models a worker loads, by name (a worker is sized by memory): each serves every task of
    # `worker_tasks` it fits, and nothing else loads. Empty: every model of `worker_tasks`.
    worker_models: Annotated[list[str], NoDecode] = []
    worker_name: str | None = None
    worker_metrics_port: int = Field(9101, ge=0, le=65535)  # 0 turns the worker's /metrics off
    # Where the worker's and `fresco webhooks --metrics-port`'s /metrics listen; default: `host` (containers: 0.0.0.0)
    metrics_host: str | None = None
    heartbeat_interval_s: float = Field(2.0, gt=0)
    heartbeat_ttl_s: float = Field(10.0, gt=0)
    job_timeout_s: dict[str, int] = {name: task.timeout_s for name, task in TASKS.items()}  # as queue_cap
    torch_threads: int = Field(0, ge=0)  # 0: torch's default
    worker_max_loras: int = Field(4, ge=1, le=64)  # LoRAs kept loaded per model (least recently used leave)
    # Each result file carries its recipe (docs/recipe.md): A1111's generation parameters and Fresco's JSON
    # (model, seed, every parameter, adapters, versions). Off: the files carry none of it.
    output_metadata: bool = True
    fault_injection: bool = False  # tests only: honour `fresco-fault:<name>` prompts (workers/faults.py)
    # Live previews (workers/previews.py): made only while someone watches a job (an events stream with
    # `?previews=true`, an AUTOMATIC1111 client's /progress), every this many denoising steps. False: none.
    previews: bool = True
    preview_every_steps: int = Field(2, ge=1, le=1000)
    # Demos and browser tests on the `tiny` profile, whose steps take milliseconds: sleep this long after
    # each denoising step, so that progress and live previews can be watched. 0 (the default) in production.
    step_delay_s: float = Field(0.0, ge=0, le=10)

    # Logs: readable text locally, JSON lines in production.
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"

    # Worker performance (workers/, BENCHMARKS.md). Dynamic batching: a worker runs up to
    # `worker_batch_size` images of compatible queued jobs in one pipeline call (1: off), waiting up to
    # `worker_batch_wait_ms` for more to arrive. `png_level`: -1 is Fresco's fast PNG encoder, 0-9
    # Pillow's at that zlib level (smaller, slower). `worker_warmup`: run each model once at start.
    worker_batch_size: int = Field(1, ge=1, le=64)
    worker_batch_wait_ms: float = Field(0.0, ge=0, le=10_000)
    png_level: int = Field(-1, ge=-1, le=9)
    worker_warmup: bool = False
    # Under a backlog, finished pipeline calls are encoded and stored on finishing threads while the next
    # waiting job runs (workers/finishing.py): at most this many held at once (memory: their images). 0: each
    # job is encoded and stored before the worker takes the next.
    worker_pending_outputs: int = Field(2, ge=0, le=16)

    @field_validator("worker_tasks", mode="before")
    @classmethod
    def _split_tasks(cls, v):
        if isinstance(v, str):
            v = [t.strip() for t in v.split(",") if t.strip()]
        unknown = [t for t in v if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; tasks are {list(TASK_NAMES)}")
        return v

    @field_validator("queue_cap", "job_timeout_s", mode="after")
    @classmethod
    def _per_task(cls, v, info):
        unknown = [t for t in v if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; tasks are {list(TASK_NAMES)}")
        default = "queue_cap" if info.field_name == "queue_cap" else "timeout_s"
        return {name: v.get(name, getattr(task, default)) for name, task in TASKS.items()}

    @field_validator("image_url_schemes", "image_url_allow_networks", "webhook_allow_networks", "worker_models",
                     mode="before")
    @classmethod
    def _split_list(cls, v):
        return [item.strip() for item in v.split(",") if item.strip()] if isinstance(v, str) else v

    @field_validator("image_url_allow_networks", "webhook_allow_networks", mode="after")
    @classmethod
    def _check_networks(cls, v):
        import ipaddress

        for item in v:
            try:
                ipaddress.ip_network(item)
            except ValueError:
                raise ValueError(f"{item!r} is not a network in CIDR notation (e.g. 10.0.0.0/8)") from None
        return v

    @field_validator("openai_model_aliases", mode="before")
    @classmethod
    def _parse_aliases(cls, v):
        return _mapping(v, "aliases")

    @field_validator("webhook_secret")
    @classmethod
    def _check_secret(cls, v):
        if v is None or v == "":
            return None
        import base64
        import binascii

        if not v.startswith("whsec_"):
            raise ValueError("the webhook secret is 'whsec_' followed by base64 (`fresco webhook-secret` makes one)")
        try:
            key = base64.b64decode(v[len("whsec_"):], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the webhook secret's part after 'whsec_' must be base64") from None
        if not 24 <= len(key) <= 64:
            raise ValueError("the webhook secret must hold 24 to 64 bytes (Standard Webhooks)")
        return v

    _key_limits: dict[str, KeyLimits] = PrivateAttr(default_factory=dict)  # from api_keys' objects

    @model_validator(mode="wrap")
    @classmethod
    def _keys_and_limits(cls, data, handler):
        """api_keys' objects: the digest stays in api_keys, the limits go to `limits()`."""
        limits = {}
        if isinstance(data, dict) and "api_keys" in data:
            data = dict(data)
            data["api_keys"], limits = _split_keys(data["api_keys"])
        settings = handler(data)
        for name, value in limits.items():
            try:
                settings._key_limits[name] = KeyLimits.model_validate(value)
            except ValidationError as exc:
                raise ValueError(f"API key {name!r}: " + "; ".join(
                    f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
        return settings

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, v):
        v = _mapping(v, "API keys")
        for name, hexdigest in v.items():
            if not name or len(hexdigest) != 64 or any(c not in "0123456789abcdef" for c in hexdigest.lower()):
                raise ValueError(f"API key {name!r}: give the SHA-256 hex digest of the key, not the key")
        return {name: hexdigest.lower() for name, hexdigest in v.items()}

    def limits(self, owner: str | None) -> KeyLimits:
        """An API key's limits (keys off, or a key with none given: the defaults)."""
        return self._key_limits.get(owner, _NO_LIMITS) if owner is not None else _NO_LIMITS

    @property
    def results_path(self) -> Path:
        return self.results_dir or self.data_dir / "results"

    @property
    def adapter_cache_path(self) -> Path:
        return self.adapter_cache_dir or self.data_dir / "adapters"

    @property
    def metrics_listen_host(self) -> str:
        """Where /metrics servers of workers and standalone dispatchers listen."""
        return self.metrics_host or self.host

    @property
    def default_worker_name(self) -> str:
        return self.worker_name or f"{socket.gethostname()}.{os.getpid()}"


_NO_LIMITS = KeyLimits()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def child_environment(**overrides: str) -> dict[str, str]:
    """The environment for child processes (`fresco up`), with Fresco settings overridden."""
    return {**os.environ, **overrides}
