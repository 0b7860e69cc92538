"""`fresco up | api | worker | generate | train | adapters | hash-key | convert | webhooks | webhook-secret`:
the composition root, the one module that starts the API (service/api/) or a worker (workers/, imported here only).

`up` is the local run: an embedded Redis (unless FRESCO_REDIS_URL is set), the API and worker
processes, restarted when they die, all stopped on Ctrl-C or SIGTERM. A real deployment runs
`fresco api` and `fresco worker` apart, against a shared Redis.

This package is the one place in service/ that imports workers/ (inside functions). Here, `main`: the
parser and the command table; each command lives in a module named for it: up.py (`up`, the Child
supervisor), serve.py (`api`, `worker`), generate.py (`generate`), train.py (`train`, `adapters`),
tools.py (`hash-key`, `convert`, `webhooks`, `webhook-secret`). __main__.py is `python -m service.cli`, as
`fresco up` starts its children.
"""

from __future__ import annotations

import argparse

from service.cli.generate import cmd_generate
from service.cli.serve import cmd_api, cmd_worker
from service.cli.tools import cmd_convert, cmd_hash_key, cmd_webhook_secret, cmd_webhooks
from service.cli.train import add_parsers as add_train_parsers
from service.cli.train import cmd_adapters, cmd_train
from service.cli.up import cmd_up
from service.settings import Settings
from service.tasks import GENERATE_TASKS


def build_parser() -> argparse.ArgumentParser:
    """Every command and its flags."""
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
    gen.add_argument("task", choices=GENERATE_TASKS)
    gen.add_argument("--prompt")
    gen.add_argument("--image", help="input image file (img2img, inpaint, upscale, svd)")
    gen.add_argument("--mask", help="inpaint: the mask image file (white = repaint, or transparent = repaint)")
    gen.add_argument("--expand", metavar="LEFT,RIGHT,TOP,BOTTOM",
                     help="inpaint: outpaint, pixels added on each side (multiples of 8), e.g. 0,256,0,0")
    gen.add_argument("--scale", type=float, help="upscale: the factor (default: the upscaler's own)")
    gen.add_argument("--hires", metavar="SCALE[:UPSCALER[:STRENGTH]]",
                     help="txt2img, sdxl: a second pass at SCALE × the size, e.g. 2 or 2:lanczos:0.4")
    gen.add_argument("--model")
    gen.add_argument("--seed", type=int)
    gen.add_argument("--priority", choices=("high", "normal", "low"),
                     help="its class: higher ones go first (at most the API key's max_priority)")
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
    add_train_parsers(sub)
    hk = sub.add_parser("hash-key", help="make an API key's digest for FRESCO_API_KEYS")
    hk.add_argument("name", help="the key's name, e.g. the client it belongs to")
    hk.add_argument("key", nargs="?", help="an existing key (default: make a new random one)")
    conv = sub.add_parser("convert", help="rewrite a model's or an upscaler's pickled (.bin, .ckpt, .pth) weights "
                                           "as safetensors")
    conv.add_argument("src", help="a diffusers model directory, or one checkpoint file")
    conv.add_argument("dst", help="a new directory (or .safetensors file) to write")
    wh = sub.add_parser("webhooks", help="deliver webhooks alone (API processes also do, unless "
                                         "FRESCO_WEBHOOK_DISPATCHER=false)")
    wh.add_argument("--metrics-port", type=int, default=0, help="serve the dispatcher's /metrics here (0: off)")
    sub.add_parser("webhook-secret", help="make a secret for FRESCO_WEBHOOK_SECRET")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    commands = {"up": cmd_up, "api": cmd_api, "worker": cmd_worker, "generate": cmd_generate,
                "train": cmd_train, "adapters": cmd_adapters, "hash-key": cmd_hash_key, "convert": cmd_convert,
                "webhooks": cmd_webhooks, "webhook-secret": cmd_webhook_secret}
    return commands[args.command](settings, args)
