"""The adapters API keys trained (POST /train): a registry per key in Redis, name -> record.

A training job's worker stores the adapter's file in storage under its content digest
(`adapters/<sha256 hex>.safetensors`, shared by every worker and API process) and registers it for the
job's key in one atomic step that also checks the job may still succeed (running, no cancel asked), the
name is free (or `replace`) and the key is under FRESCO_MAX_ADAPTERS_PER_KEY. Only then does the job end
`succeeded`: a canceled or failed job registers nothing.

A request names a registered LoRA in `loras` by name, or writes an embedding's token in its prompt; the
API resolves either from the caller's registry alone (another key's names are unknown to it), and the
job's params carry the file's digest, which the worker fetches from storage through its adapter cache
(workers/adapter_files.py). A reference count per digest says when no record names a file any more, so
deleting a record deletes the file only then. Keys are spelled in service/jobs/keys.py; the scripts
live beside the job protocol's (service/jobs/scripts/).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from service.catalog import LORA_SCALE
from service.jobs import keys
from service.jobs.protocol import Script
from service.jobs.states import JobStatus
from service.storage.names import ADAPTERS, adapter_file

REGISTER, UNREGISTER = Script("register_adapter"), Script("unregister_adapter")
# What a record shows (GET /adapters, GET /models, the training job's result), besides the file's URL.
SHOWN = ("name", "kind", "model", "family", "trigger", "token", "digest", "size_bytes", "created_at", "job_id")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def location(digest: str) -> tuple[str, str]:
    """Where the file of `digest` lives in storage: (folder, name)."""
    return ADAPTERS, adapter_file(digest)


def listing(record: dict) -> dict:
    """How a record is shown to its owner (`"owner": "you"`: only the key that trained it sees it)."""
    out = {k: record[k] for k in SHOWN if record.get(k) is not None}
    out["owner"] = "you"
    return out


def model_listing(record: dict) -> dict:
    """How GET /models shows a registered adapter under each model it fits, as the server's own adapters are
    shown (service/catalog/addons.py `listing`), marked `"owner": "you"`."""
    out: dict = {"name": record["name"], "kind": record["kind"], "owner": "you",
                 "description": f"trained on {record['model']} ({record.get('steps')} steps)"}
    if record.get("token"):
        out["tokens"] = [record["token"]]
    if record["kind"] == "lora":
        out["triggers"] = [record["trigger"]] if record.get("trigger") else []
        out["scale"] = {"default": 1.0, "minimum": LORA_SCALE[0], "maximum": LORA_SCALE[1]}
    return out


def fits(record: dict, spec) -> bool:
    """Whether a registered adapter fits model `spec` (a catalogue ModelSpec): made on a model of its family."""
    return record["family"] == spec.family and spec.memory != "minimal"


async def records(redis, owner: str | None) -> dict[str, dict]:
    """The key's adapters by name."""
    raw = await redis.hgetall(keys.adapters(owner))
    return {_text(name): json.loads(value) for name, value in raw.items()}


async def record(redis, owner: str | None, name: str) -> dict | None:
    raw = await redis.hget(keys.adapters(owner), name)
    return None if raw is None else json.loads(raw)


async def count(redis, owner: str | None) -> int:
    return int(await redis.hlen(keys.adapters(owner)))


@dataclass(frozen=True)
class Registered:
    ok: bool
    why: str = ""  # when not ok: "ended" (canceled or ended meanwhile), "taken", "limit"
    replaced: dict | None = None  # the record it replaced
    raw: str = ""  # the record as written (to unregister exactly it)


def register(client, owner: str | None, job_id: str, entry: dict, *, replace: bool, limit: int) -> Registered:
    """Register `entry` (a record: name, digests, ...) for `owner` if job `job_id` may still succeed (sync)."""
    raw = json.dumps(entry, sort_keys=True)
    reply = REGISTER.run(client, (keys.adapters(owner), keys.ADAPTER_REFS, keys.job(job_id)),
                         (entry["name"], raw, "1" if replace else "0", limit, JobStatus.RUNNING, *entry["digests"]))
    if int(reply[0]) != 1:
        return Registered(False, _text(reply[1]))
    old = _text(reply[1])
    return Registered(True, replaced=json.loads(old) if old else None, raw=raw)


def _unregistered(reply) -> tuple[dict, list[str]] | None:
    if not reply:
        return None
    return json.loads(_text(reply[0])), [_text(d) for d in reply[1:]]


def unregister(client, owner: str | None, name: str, expect: str = "") -> tuple[dict, list[str]] | None:
    """Remove `owner`'s adapter `name` (only if its record is `expect`, when given): the record and the
    digests no record names any more (their files may go), or None when there was none (sync)."""
    return _unregistered(UNREGISTER.run(client, (keys.adapters(owner), keys.ADAPTER_REFS), (name, expect)))


async def aunregister(redis, owner: str | None, name: str) -> tuple[dict, list[str]] | None:
    return _unregistered(await UNREGISTER.arun(redis, (keys.adapters(owner), keys.ADAPTER_REFS), (name, "")))
