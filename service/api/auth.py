"""Optional API keys, per-key rate limits, and signed result URLs.

Keys are configured as SHA-256 digests (`FRESCO_API_KEYS=alice:<hex>,bob:<hex>`; `fresco hash-key`
makes one), never in clear, and a presented key's digest is compared with each in constant time.
Each job belongs to the key that made it: another key gets the same 404 as an unknown id. With keys
on, result URLs carry an expiring HMAC signature, so a browser can fetch them without a header
(service/signed_urls.py, shared with the webhook dispatcher; its secret is FRESCO_URL_SIGNING_SECRET or a
random one kept in Redis or the data directory, never derived from the keys).
The AUTOMATIC1111 routes (`/sdapi/v1`) also take the key as HTTP Basic credentials, since that is all
their clients can send (Open WebUI's "API Auth String", SillyTavern's and webuiapi's `user:password`):
the password is the key, the user name is ignored.
The rate limit is a GCRA held atomically in Redis: `limit` requests a minute, bursts up to `limit`
(service/jobs/scripts/gcra.lua, run through `protocol.rate_limit`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import secrets

from fastapi import Request

from service.api.errors import FrescoError
from service.jobs import protocol
from service.redis import REDIS_DOWN
from service.signed_urls import UrlSigner

log = logging.getLogger("fresco.api")


class Unauthorized(FrescoError):
    status, code, message = 401, "unauthorized", "a valid API key is required (Authorization: Bearer <key>)"

    def __init__(self, message: str | None = None, scheme: str = "Bearer"):
        super().__init__(message, headers={"WWW-Authenticate": f'{scheme} realm="fresco"'})


BASIC_HINT = "a valid API key is required (Authorization: Bearer <key>, or Basic auth with the key as the password)"


def _presented_key(header: str, basic: bool) -> str | None:
    """The key an Authorization header carries: `Bearer <key>`, or with `basic`, `Basic base64(user:key)`
    (no colon: the whole decoded value is the key). None when there is none."""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if not token:
        return None
    if scheme.lower() == "bearer":
        return token
    if basic and scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(token, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, colon, password = decoded.partition(":")
        return (password if colon else user) or None
    return None


class RateLimited(FrescoError):
    status, code, message = 429, "rate_limited", "too many requests for this API key; retry later"

    def __init__(self, retry_after: float, message: str | None = None):
        super().__init__(message, headers={"Retry-After": str(max(1, int(retry_after + 0.999)))})


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "fresco_" + secrets.token_urlsafe(32)


class Auth:
    def __init__(self, settings, redis):
        self.keys: dict[str, str] = dict(settings.api_keys)  # name -> sha256 hex digest
        self.enabled = bool(self.keys)
        self.limit = settings.rate_limit_per_minute
        self.redis = redis
        self.rate_limited = self.enabled and bool(self.limit)
        self.urls = UrlSigner(settings)

    def owner(self, request: Request, basic: bool = False) -> str | None:
        """The caller's key name (None when keys are off); 401 when a key is required and not valid.
        `basic`: HTTP Basic credentials carry the key too, and a 401 asks for them (`/sdapi/v1` only)."""
        if not self.enabled:
            return None
        scheme = "Basic" if basic else "Bearer"
        key = _presented_key(request.headers.get("authorization", ""), basic)
        if key is None:
            raise Unauthorized(BASIC_HINT if basic else None, scheme)
        presented = digest(key)
        found = ""
        for name, expected in self.keys.items():  # every digest is compared: no early exit
            if hmac.compare_digest(presented, expected):
                found = name
        if not found:
            raise Unauthorized("the API key is not valid", scheme)
        return found

    async def rate_limit(self, owner: str | None) -> None:
        if not self.rate_limited or owner is None:
            return
        wait = await protocol.rate_limit(owner, self.limit).arun(self.redis)
        if wait is not None:
            raise RateLimited(wait)

    # ---- signed result URLs (service/signed_urls.py) ----

    async def load_url_secret(self) -> None:
        """Find (or make) the result URLs' secret off the event loop, at start: signing then never waits on
        Redis. With Redis down now, the first URL signed or checked finds it instead."""
        if self.urls.enabled:
            try:
                await asyncio.to_thread(lambda: self.urls.secret)
            except REDIS_DOWN:
                log.warning("Redis is unreachable: the result URLs' signing secret is read on first use")

    def sign(self, job_id: str, name: str) -> str:
        """The query string for a result URL ('' when keys are off)."""
        return self.urls.sign(job_id, name)

    def verify(self, job_id: str, name: str, expires: str | None, signature: str | None) -> bool:
        return self.urls.verify(job_id, name, expires, signature)
