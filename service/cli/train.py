"""`fresco train` and `fresco adapters`: a training job started from a dataset folder through the Python
client (service/client/), followed on a rich progress bar on stderr that shows the step and the loss
(Ctrl-C cancels it), the adapter it made printed with how to use it; and the API key's adapters listed
or deleted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.cli.generate import _report, _say, add_params, queued_note, to_end
from service.settings import Settings

METHODS = ("lora", "embedding", "lora+embedding")
# The flags that are request fields as they are (the flag's dest is the field's name).
FIELD_FLAGS = ("method", "steps", "rank", "learning_rate", "resolution", "trigger", "init_token", "seed", "priority")


def client_options(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """--url and --api-key. `suppress`: on a subcommand's parser, so that its unset defaults do not
    overwrite the same options given before the subcommand (`fresco adapters --url U delete NAME`)."""
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--url", default=default,
                        help="the API's base URL (default: FRESCO_URL, else http://FRESCO_HOST:FRESCO_PORT)")
    parser.add_argument("--api-key", default=default,
                        help="an API key, sent as Authorization: Bearer (default: FRESCO_API_KEY)")


def add_parsers(sub) -> None:
    """`train` and `adapters [list | delete NAME]` on the CLI's subcommand parsers."""
    train = sub.add_parser("train", help="train a LoRA or an embedding on a dataset folder, following its progress")
    train.add_argument("dataset", metavar="DIR",
                       help="a folder of PNG/JPEG/WebP images with same-name .txt captions (kohya's layout; "
                            "subfolders too), or a .zip of one")
    train.add_argument("--name", required=True, help="the adapter's name: lowercase letters, digits, . _ -")
    train.add_argument("--model", help="the base model, an SD or SDXL model (default: the server's for train)")
    train.add_argument("--method", choices=METHODS, help="lora (default), embedding, or both together")
    train.add_argument("--steps", type=int, help="training steps (server default 500)")
    train.add_argument("--rank", type=int, help="the LoRA's rank (server default 16)")
    train.add_argument("--learning-rate", type=float)
    train.add_argument("--resolution", type=int, help="the training side, 256..1024 (default: the model's)")
    train.add_argument("--trigger", help="LoRA: words put before every caption (default: the name); "
                                         "embedding: its token (default: <name>)")
    train.add_argument("--init-token", help="embedding: the word its vectors start from")
    train.add_argument("--validation-prompt", help="the prompt of the validation images")
    train.add_argument("--seed", type=int)
    train.add_argument("--priority", choices=("high", "normal", "low"),
                       help="its class: higher ones go first (at most the API key's max_priority)")
    train.add_argument("--caption", help="the caption of each image that has no .txt file")
    train.add_argument("--replace", action="store_true", help="replace this key's adapter of the same name")
    train.add_argument("--param", action="append", metavar="KEY=VALUE",
                       help="any other request field (alpha, batch_size, ...); JSON values")
    train.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                       help="follow the job to its end (default), or print its id and return at once")
    train.add_argument("--out", help="save the adapter's .safetensors file and the validation images here")
    client_options(train)
    adapters = sub.add_parser("adapters", help="list the adapters your API key trained (or `delete NAME`)")
    client_options(adapters)
    actions = adapters.add_subparsers(dest="action")
    client_options(actions.add_parser("list", help="list them (the default)"), suppress=True)
    delete = actions.add_parser("delete", help="delete one")
    delete.add_argument("name")
    client_options(delete, suppress=True)


def _base_url(settings: Settings, args) -> str:
    from service.client.core import env_base_url

    return args.url or env_base_url() or f"http://{settings.host}:{settings.port}"


def _request_fields(args) -> dict | str:
    """The request's fields besides the dataset; a usage message when a flag is malformed."""
    fields = {flag: getattr(args, flag) for flag in FIELD_FLAGS if getattr(args, flag) is not None}
    if args.validation_prompt is not None:
        fields["validation"] = {"prompt": args.validation_prompt}
    if args.replace:
        fields["replace"] = True
    return add_params(fields, args.param)


def cmd_train(settings: Settings, args) -> int:
    """Start a training job on the folder; follow it (Ctrl-C cancels it); print the adapter it made."""
    from service.client import Client, FrescoError

    fields = _request_fields(args)
    if isinstance(fields, str):
        _say(fields)
        return 2
    if not Path(args.dataset).exists():
        _say(f"fresco train: {args.dataset}: no such folder")
        return 2
    with Client(_base_url(settings, args), args.api_key) as client:
        try:
            job = client.train(args.model, args.name, args.dataset, captions=args.caption, **fields)
            announce = (f"job {job.id} (train {args.name}, model {job.model}, {job.params.get('steps')} steps)"
                        + queued_note(job))
            if not args.wait:
                _say(announce)
                print(job.id)
                return 0
            job = to_end(client, job, _follow, announce)
            if isinstance(job, int):
                return job
            _print_adapter(job)
            if args.out:
                for path in _save(client, job, Path(args.out)):
                    print(f"saved {path}")
        except (ValueError, TypeError, OSError) as exc:  # the dataset, read here before anything was sent
            _say(f"fresco train: {exc}")
            return 2
        except FrescoError as exc:
            _report(exc)
            return 1
        except KeyboardInterrupt:  # before the job existed, or while saving: nothing to cancel
            return 130
    return 0


def _progress_bar():
    """rich's progress bar on stderr: the stage, a bar, the percentage, the step, the loss, the time left."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.fields[stage]:<9}"), BarColumn(), TaskProgressColumn(),
                    TextColumn("{task.fields[steps]:<15}"), TextColumn("{task.fields[loss]:<12}"),
                    TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True))


def _bar_fields(progress, steps: str = "") -> dict:
    """The bar's fields; `steps`: the last training step's text, shown through the stages after it (whose
    own steps are the validation images' encoding)."""
    if progress.stage == "training" and progress.total_steps:
        steps = f"step {progress.step}/{progress.total_steps}"
    loss = f"loss {progress.loss:.4f}" if progress.loss is not None else ""
    return {"completed": progress.fraction, "stage": progress.stage, "steps": steps, "loss": loss}


def _follow(client, job):
    """Show the job's progress events on the bar until it ends; the terminal Job."""
    state = {"steps": "", "resumed": None}

    def show(progress) -> None:
        if progress.resumed_from is not None and progress.resumed_from != state["resumed"]:
            state["resumed"] = progress.resumed_from
            bar.console.print(f"resumed from the checkpoint of step {progress.resumed_from}")
        fields = _bar_fields(progress, state["steps"])
        state["steps"] = fields["steps"]
        bar.update(row, refresh=True, **fields)

    with _progress_bar() as bar:
        row = bar.add_task(job.id, total=1.0, **_bar_fields(job.progress))
        # Drawn at each event, besides rich's own ticks, so that no step goes by unseen.
        job = client.follow(job, lambda event: show(event.progress))
        show(job.progress)
    return job


def _size(size: int | None) -> str:
    if size is None:
        return ""
    if size < 1024:
        return f"{size} B"
    return f"{size / 1024:.1f} KiB" if size < 1024 * 1024 else f"{size / 1024 / 1024:.1f} MiB"


def usage_hint(adapter) -> str:
    """How to generate with the adapter from the CLI: a LoRA by name (and its trigger in the prompt), an
    embedding by its token in the prompt."""
    words = adapter.token or adapter.trigger or adapter.name
    lora = f" --lora {adapter.name}" if "lora" in adapter.kind else ""
    return f'fresco generate txt2img --model {adapter.model}{lora} --prompt "{words}, ..."'


def _print_adapter(job) -> None:
    adapter = job.adapter
    words = f", token {adapter.token}" if adapter.token else f", trigger {adapter.trigger!r}" if adapter.trigger else ""
    print(f"adapter {adapter.name} ({adapter.kind} on {adapter.model}{words})")
    print(f"  digest  {adapter.digest}")
    print(f"  size    {_size(adapter.size_bytes)}")
    print(f"  url     {adapter.url}")
    if job.progress.loss is not None:
        print(f"  loss    {job.progress.loss:.4f} (last step)")
    for image in job.images:
        print(f"  validation image  {image.url}")
    print(f"use it:  {usage_hint(adapter)}")


def _save(client, job, out: Path) -> list[Path]:
    """The adapter's file as `<out>/<name>.safetensors`, and the validation images beside it."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{job.adapter.name}.safetensors"
    partial = path.with_name(path.name + ".part")
    partial.write_bytes(client.fetch(job.adapter.url))
    partial.replace(path)
    return [path, *client.download(job, out)]


def cmd_adapters(settings: Settings, args) -> int:
    """List the API key's adapters, or delete one."""
    from service.client import Client, FrescoError

    with Client(_base_url(settings, args), args.api_key) as client:
        try:
            if args.action == "delete":
                client.delete_adapter(args.name)
                print(f"deleted adapter {args.name}")
                return 0
            adapters = client.adapters()
        except FrescoError as exc:
            _report(exc)
            return 1
    rows = [("NAME", "KIND", "MODEL", "TRIGGER/TOKEN", "SIZE", "DIGEST")]
    rows += [(a.name, a.kind, a.model, a.token or a.trigger or "", _size(a.size_bytes),
              (a.digest or "")[:19]) for a in adapters]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    if adapters:
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    limit = f" of at most {adapters.limit}" if adapters.limit is not None else ""
    print(f"{len(adapters)} adapter(s){limit}", file=sys.stderr)
    return 0
