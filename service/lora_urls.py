"""A LoRA URL's query string (often its token: a signed or private download link) kept out of all a job
shows: its `params` (the JobView, webhook bodies), its result files' recipes, the worker's disk cache.

The API splits each `loras[i].url` of a job's params into the URL shown (`shown_url`: no credentials,
query or fragment) and, only when they differ, the full URL, which the job record keeps apart from
`params` (its `adapter_urls` field, as it keeps the `webhook`). The worker puts the full URLs back into
the params it runs with (`restore`) and shows them without their query again in what it writes back
(`hide`)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def shown_url(url: str) -> str:
    """`url` as a job shows it: scheme, host and port, path; no credentials, query or fragment."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL: shown as nothing of it
        return ""
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def hide(loras: list[dict]) -> list[dict]:
    """`loras` (a job's entries) with each URL shown without its query."""
    return [{**e, "url": shown_url(e["url"])} if e.get("url") else e for e in loras]


def split(params: dict) -> tuple[dict, dict[str, str]]:
    """`params` with its LoRA URLs shown without their query, and the full URL of each entry that lost
    something, by its index in `loras` (as a string: the record keeps it as JSON)."""
    loras = params.get("loras") or []
    full = {str(i): e["url"] for i, e in enumerate(loras) if e.get("url") and shown_url(e["url"]) != e["url"]}
    return ({**params, "loras": hide(loras)} if full else params), full


def restore(params: dict, full: dict[str, str] | None) -> dict:
    """`params` (as the record keeps them) with the full URL of each LoRA that `split` took it from."""
    if not full:
        return params
    loras = [dict(e) for e in params.get("loras") or []]
    for index, url in full.items():
        i = int(index)
        if i < len(loras) and loras[i].get("url") == shown_url(url):
            loras[i]["url"] = url
    return {**params, "loras": loras}
