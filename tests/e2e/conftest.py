"""The e2e tests' shared stack with API keys on, where settings only add up: the compatible APIs'
clients (AUTOMATIC1111's, OpenAI's: a key each, OpenAI model aliases) and webhooks (a secret, the local
receiver allowed, quick retries) each see the stack as their own test would set it, so one stack (one
API, one worker with the tiny SDXL, Turbo, SD, SD 3.5 and FLUX.1 models) serves all of them. Its modules run in one
pytest-xdist process (tests/conftest.py groups them), so it starts once."""

from __future__ import annotations

import pytest

from service.api.auth import digest
from service.webhooks import signing
from tests.stack import Stack
from tests.webhook_receiver import stack_env

# Keys by client name: each client gets its own, as each would in a deployment (its own remembered
# checkpoint, its own progress).
KEYS = {name: f"fresco-e2e-{name}-key" for name in (
    "webuiapi", "openwebui", "sillytavern", "librechat", "alice", "bob", "lora", "interrupt",  # A1111's
    "openai", "webhooks")}
OPENAI_ALIASES = "dall-e-2:tiny-turbo,dall-e-3:tiny-turbo,gpt-image-1:tiny-turbo"
WEBHOOK_SECRET = signing.new_secret()


@pytest.fixture(scope="session")
def keyed_stack(tmp_path_factory):
    env = {**stack_env(WEBHOOK_SECRET), "FRESCO_API_KEYS": ",".join(f"{n}:{digest(k)}" for n, k in KEYS.items()),
           "FRESCO_RATE_LIMIT_PER_MINUTE": "0", "FRESCO_OPENAI_MODEL_ALIASES": OPENAI_ALIASES,
           "FRESCO_FAULT_INJECTION": "true"}
    with Stack(None, tmp_path_factory.mktemp("keyed-stack"), env,
               profile=("tiny-sdxl", "tiny-turbo", "tiny-sd", "tiny-sd3", "tiny-flux", "tiny-flux-schnell")) as s:
        yield s
