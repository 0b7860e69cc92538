"""A job record as the contract's JobView: timestamps in ISO 8601, result and input URLs absolute
(and, with API keys on, signed: service/signed_urls.py). Shared by the API (service/api/) and the
webhook dispatcher (service/webhooks/), so it imports neither FastAPI nor service.api."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

from service.jobs.states import queued_progress
from service.storage.names import ADAPTERS, adapter_file


def iso(ts: float | str | None) -> str | None:
    if ts in (None, ""):
        return None
    dt = datetime.fromtimestamp(float(ts), tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _json(h: dict, key: str, default=None):
    value = h.get(key)
    return json.loads(value) if value else default


def url_without_query(url: str) -> str:
    """A URL as shown back (JobView, logs): its query and fragment, which may hold a token, left out."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _webhook(h: dict) -> dict | None:
    """What the job's webhook got: `delivered` once every delivery owed so far has been (none owed yet: false)."""
    url = h.get("webhook")
    if not url:
        return None
    owed = int(h.get("webhook_enqueued") or 0)
    status = h.get("webhook_last_status")
    return {"url": url_without_query(url), "events": _json(h, "webhook_events", []),
            "delivered": owed > 0 and int(h.get("webhook_delivered") or 0) >= owed,
            "attempts": int(h.get("webhook_attempts") or 0), "last_status": int(status) if status else None}


def _no_signature(job_id: str, name: str) -> str:
    return ""


def to_view(h: dict[str, str], base_url: str, sign: Callable[[str, str], str] = _no_signature) -> dict[str, Any]:
    """The stored record -> the JobView. `sign(job_id, name)` gives a result URL's query string."""
    job_id = h["id"]

    def url(name: str) -> str:
        return f"{base_url}/results/{job_id}/{name}{sign(job_id, name)}"

    result = _json(h, "result")
    if result:
        for item in result.get("images") or []:
            item["url"] = url(item.pop("name"))
        if result.get("video"):
            result["video"]["url"] = url(result["video"].pop("name"))
        adapter = result.get("adapter")
        if adapter:  # a trained adapter's file: in the adapters folder, by its digest
            file = adapter_file(adapter["digest"])
            adapter["url"] = f"{base_url}/results/{ADAPTERS}/{file}{sign(ADAPTERS, file)}"
    params = _json(h, "params", {})

    def shown(image: dict) -> dict:
        return {"url": url(image["name"]), "width": image.get("width"), "height": image.get("height")}

    for key in ("image", "mask"):  # the stored input image, and an inpaint job's mask
        image = params.get(key)
        if isinstance(image, dict) and "name" in image:
            params[key] = shown(image)
    for item in params.get("images") or []:  # a training job's dataset
        if isinstance(item, dict) and isinstance(item.get("image"), dict) and "name" in item["image"]:
            item["image"] = shown(item["image"])
    position = int(h.get("_queue_position", -1))
    return {
        "id": job_id,
        "task": h["task"],
        "model": h["model"],
        "status": h["status"],
        "created_at": iso(h.get("created_at")),
        "started_at": iso(h.get("started_at")),
        "finished_at": iso(h.get("finished_at")),
        "queue_position": position if position >= 0 else None,
        "priority": h.get("priority") or "normal",
        "progress": _json(h, "progress", queued_progress()),
        "params": params,
        "warnings": _json(h, "warnings", []),
        "result": result,
        "error": _json(h, "error"),
        "timings": _json(h, "timings", {}),
        "webhook": _webhook(h),
    }
