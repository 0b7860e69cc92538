"""The operator's one-off commands: `fresco hash-key` and `fresco webhook-secret` (secrets for the
settings), `fresco convert` (pickled weights, a model's or an upscaler's, to safetensors: workers/convert.py),
and `fresco webhooks` (the webhook dispatcher run alone, service/webhooks/standalone.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

from service.settings import Settings


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

    notes: list[str] = []
    try:
        written = convert(Path(args.src), Path(args.dst), notes)
    except (ValueError, OSError) as exc:  # refused, or the disk said no: nothing is left at the destination
        print(f"fresco convert: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} safetensors file(s) under {args.dst}; it loads without trust_pickle")
    for note in notes:
        print(note)
    return 0


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
