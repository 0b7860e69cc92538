"""service/webhooks/signing.py against the Standard Webhooks reference verifier (`standardwebhooks`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from service.settings import Settings
from service.webhooks import signing
from tests.conftest import ROOT

BODY = '{"type":"job.completed","data":{"prompt":"un renard — 狐狸"}}'


def test_new_secrets_are_valid_settings_and_differ():
    a, b = signing.new_secret(), signing.new_secret()
    assert a != b and a.startswith("whsec_") and len(signing.secret_key(a)) == signing.SECRET_BYTES
    assert Settings(webhook_secret=a).webhook_secret == a


def test_the_reference_verifier_accepts_the_signature():
    secret = signing.new_secret()
    headers = signing.headers(signing.secret_key(secret), "msg_1", int(time.time()), BODY)
    assert Webhook(secret).verify(BODY.encode(), headers) == {"type": "job.completed",
                                                             "data": {"prompt": "un renard — 狐狸"}}
    assert headers["content-type"] == "application/json"


@pytest.mark.parametrize("change", ["body", "id", "timestamp", "secret"])
def test_the_reference_verifier_refuses_anything_changed(change):
    secret = signing.new_secret()
    at = int(time.time())
    headers = signing.headers(signing.secret_key(secret), "msg_1", at, BODY)
    body = BODY
    if change == "body":
        body = BODY.replace("renard", "lapin")
    elif change == "id":
        headers["webhook-id"] = "msg_2"
    elif change == "timestamp":
        headers["webhook-timestamp"] = str(at - 1)
    else:
        secret = signing.new_secret()
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.encode(), headers)


def test_a_stale_timestamp_is_refused_by_receivers():
    """Why every attempt signs with its own time: receivers refuse timestamps older than 5 minutes."""
    secret = signing.new_secret()
    headers = signing.headers(signing.secret_key(secret), "msg_1", int(time.time()) - 600, BODY)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(secret).verify(BODY.encode(), headers)


def fresco(*args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FRESCO_")}
    return subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**environ, **env}, timeout=60)


def test_the_cli_makes_a_secret_and_refuses_to_dispatch_without_one():
    made = fresco("webhook-secret")
    assert made.returncode == 0 and Settings(webhook_secret=made.stdout.strip()).webhook_secret
    refused = fresco("webhooks")
    assert refused.returncode == 2 and "FRESCO_WEBHOOK_SECRET" in refused.stderr
