"""What a training job leaves: its adapter's files in storage (`adapters/<digest>.safetensors`) and their
record in its API key's registry (service/adapter_registry.py), written as the job ends well; its
checkpoint, deleted however it ends (a lost worker's job keeps it, to resume from).

The files go first, then the record, in the one atomic step that also checks the job may still
succeed; a job that ends otherwise after all has its record taken back, and files no record names go.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from service import adapter_registry
from service.jobs import keys
from service.jobs.states import ErrorCode
from service.settings import Settings
from workers.errors import JobFailed

log = logging.getLogger("fresco.train")
CHECKPOINT = "checkpoint.pt"  # a training job's latest checkpoint, beside its files
# Why a registration was refused -> the job's error message.
REFUSED = {
    "taken": "the adapter name {name!r} was taken by another job of this API key meanwhile; train again with "
             "another name or \"replace\": true",
    "limit": "this API key reached its limit of adapters (FRESCO_MAX_ADAPTERS_PER_KEY) meanwhile; delete one "
             "and train again",
    "ended": "the job ended (canceled) before its adapter could be registered",
}


def forget_checkpoint(storage, job_id: str) -> None:
    try:
        storage.delete(job_id, CHECKPOINT)
    except Exception:  # a checkpoint left behind expires with the job's folder
        log.warning("deleting the checkpoint of job %s failed", job_id, exc_info=True)


def _owner(redis, job_id: str) -> str | None:
    raw = redis.hget(keys.job(job_id), "owner")
    owner = raw.decode() if isinstance(raw, bytes) else raw
    return owner or None


def _drop_unnamed(redis, storage, digests) -> None:
    """Delete the files of `digests` that no registry record names."""
    for digest in digests:
        if not redis.hexists(keys.ADAPTER_REFS, digest):
            storage.delete(*adapter_registry.location(digest))


@dataclass
class Registered:
    owner: str | None
    name: str
    raw: str
    shown: dict  # the job's `result.adapter` (its URL is the API's to add)

    def undo(self, redis, storage) -> None:
        removed = adapter_registry.unregister(redis, self.owner, self.name, expect=self.raw)
        if removed is not None:
            _drop_unnamed(redis, storage, removed[1])


def register(redis, storage, settings: Settings, job_id: str, adapter: dict) -> Registered:
    """Store the adapter's files and register its record for the job's key; JobFailed when refused."""
    record = dict(adapter["record"], job_id=job_id, created_at=round(time.time(), 3))
    for digest, data in adapter["files"].items():
        storage.put(*adapter_registry.location(digest), data)
    owner = _owner(redis, job_id)
    done = adapter_registry.register(redis, owner, job_id, record, replace=adapter["replace"],
                                     limit=settings.max_adapters_per_key)
    if not done.ok:
        _drop_unnamed(redis, storage, adapter["files"])
        raise JobFailed(ErrorCode.INVALID_INPUT, REFUSED[done.why].format(name=record["name"]))
    if done.replaced:
        _drop_unnamed(redis, storage, set(done.replaced.get("digests", [])) - set(adapter["files"]))
    shown = {k: record[k] for k in ("name", "kind", "model", "family", "trigger", "token", "digest", "size_bytes")
             if record.get(k) is not None}
    log.info("job %s: adapter %s (%s) registered for %s", job_id, record["name"], record["digest"][:19],
             owner or "everyone (API keys off)")
    return Registered(owner, record["name"], done.raw, shown)
