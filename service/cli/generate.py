"""`fresco generate`: the flags made into a request (`--lora`, `--control`, `--param`), the job
submitted through the Python client (service/client/), followed on a rich progress bar on stderr
(Ctrl-C cancels it), its results saved under --out.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from service.settings import Settings


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


def _expand_arg(item: str) -> dict | str:
    """`--expand LEFT,RIGHT,TOP,BOTTOM` (pixels; missing sides 0) as an `expand` object."""
    try:
        sides = [int(v) for v in item.split(",")]
    except ValueError:
        sides = []
    if not 1 <= len(sides) <= 4:
        return f"--expand takes LEFT,RIGHT,TOP,BOTTOM in pixels, got {item!r}"
    return dict(zip(("left", "right", "top", "bottom"), sides + [0] * (4 - len(sides))))


def _hires_arg(item: str) -> dict | str:
    """`--hires SCALE[:UPSCALER[:STRENGTH]]` as a `hires` object."""
    parts = item.split(":")
    try:
        out = {"scale": float(parts[0])}
        if len(parts) > 1 and parts[1]:
            out["upscaler"] = parts[1]
        if len(parts) > 2:
            out["strength"] = float(parts[2])
    except ValueError:
        return f"--hires takes SCALE[:UPSCALER[:STRENGTH]], got {item!r}"
    return out if len(parts) <= 3 else f"--hires takes SCALE[:UPSCALER[:STRENGTH]], got {item!r}"


def _request_fields(args) -> dict | str:
    """The request's fields (all but `task`) from the flags; a usage message when a flag is malformed."""
    fields: dict = {}
    for flag in ("prompt", "model", "seed", "priority"):
        if getattr(args, flag) is not None:
            fields[flag] = getattr(args, flag)
    if args.image:
        fields["image"] = Path(args.image)
    if getattr(args, "mask", None):
        fields["mask"] = Path(args.mask)
    if getattr(args, "scale", None) is not None:
        fields["scale"] = args.scale
    for flag, parse in (("expand", _expand_arg), ("hires", _hires_arg)):
        if getattr(args, flag, None):
            value = parse(getattr(args, flag))
            if isinstance(value, str):
                return value
            fields[flag] = value
    if args.lora:
        fields["loras"] = [_lora_arg(item) for item in args.lora]
    for item in args.control or []:
        entry = _control_arg(item)
        if entry is None:
            return f"--control takes CONTROLNET=IMAGE_FILE[:SCALE], got {item!r}"
        fields.setdefault("control", []).append(entry)
    return add_params(fields, args.param)


def add_params(fields: dict, params: list[str] | None) -> dict | str:
    """`fields` with each `--param key=value` (the value as JSON, else text); a usage message when one is
    malformed."""
    for item in params or []:
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
            job = to_end(client, job, _follow, f"job {job.id} ({job.task}, model {job.model}, seed {job.seed})"
                                               + queued_note(job))
            if isinstance(job, int):
                return job
            for path in client.download(job, args.out):
                print(path)
        except FrescoError as exc:
            _report(exc)
            return 1
        except KeyboardInterrupt:  # before the job existed, or while downloading: nothing to cancel
            return 130
    return 0


def queued_note(job) -> str:
    """Where a queued job stands: `, queued: 3 jobs ahead` ('' once it runs)."""
    if job.status != "queued" or job.queue_position is None:
        return ""
    ahead = job.queue_position
    return ", queued: next" if ahead == 0 else f", queued: {ahead} job{'s' if ahead != 1 else ''} ahead"


def to_end(client, job, follow, announce: str):
    """Say `announce`, then `follow(client, job)` (a progress display) until the job ends: from the moment
    the job is announced, Ctrl-C cancels it. The succeeded job (its warnings said), or the exit code: 130
    canceled, 1 failed."""
    try:
        _say(announce)
        job = follow(client, job)
    except KeyboardInterrupt:
        _cancel(client, job)
        return 130
    if not job.succeeded:
        _say(f"job {job.status}: {job.error.message if job.error else ''}")
        return 1
    for warning in job.warnings:
        _say(f"warning: {warning}")
    return job


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


def _bar_fields(progress, position: int | None = None) -> dict:
    steps = f"step {progress.step}/{progress.total_steps}" if progress.total_steps else ""
    stage = f"queued ({position} ahead)" if progress.stage == "queued" and position else progress.stage
    return {"completed": progress.fraction, "stage": stage, "steps": steps}


def _follow(client, job):
    """Show the job's progress events on the bar until it ends; the terminal Job."""
    with _progress_bar() as bar:
        row = bar.add_task(job.id, total=1.0, **_bar_fields(job.progress, job.queue_position))
        # Drawn at each event, besides rich's own ticks, so that no stage goes by unseen.
        job = client.follow(job, lambda event: bar.update(row, refresh=True, **_bar_fields(event.progress)))
        bar.update(row, refresh=True, **_bar_fields(job.progress))
    return job
