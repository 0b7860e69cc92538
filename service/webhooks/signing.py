"""Standard Webhooks signatures (https://www.standardwebhooks.com): what a receiver verifies a delivery
with, e.g. `standardwebhooks.Webhook(secret).verify(body, headers)`.

    webhook-id          the delivery's id, the same on every retry (receivers drop duplicates by it)
    webhook-timestamp   this attempt's time, integer seconds since the epoch (receivers refuse stale ones)
    webhook-signature   "v1," + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}")), where the key is
                        the base64-decoded part of the secret after "whsec_"
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # the spec asks for 24 to 64 random bytes
USER_AGENT = "Fresco-Webhooks/1"


def new_secret() -> str:
    """A fresh secret for FRESCO_WEBHOOK_SECRET."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret (validated by the settings)."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signature(key: bytes, delivery_id: str, timestamp: int, body: str) -> str:
    digest = hmac.new(key, f"{delivery_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(key: bytes, delivery_id: str, timestamp: int, body: str) -> dict[str, str]:
    """The headers of one delivery attempt: the three the spec names, and the body's type."""
    return {"webhook-id": delivery_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(key, delivery_id, timestamp, body),
            "content-type": "application/json", "user-agent": USER_AGENT}
