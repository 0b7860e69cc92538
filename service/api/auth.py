"""Optional API keys, per-key rate limits, and signed result URLs.

Keys are configured as SHA-256 digests (`FRESCO_API_KEYS=alice:<hex>,bob:<hex>`; `fresco hash-key`
makes one), never in clear, and a presented key's digest is compared with each in constant time.
Each job belongs to the key that made it: another key gets the same 404 as an unknown id. With keys
on, result URLs carry an expiring HMAC signature, so a browser can fetch them without a header.
The AUTOMATIC1111 routes (`/sdapi/v1`) also take the key as HTTP Basic credentials, since that is all
their clients can send (Open WebUI's "API Auth String", SillyTavern's and webuiapi's `user:password`):
the password is the key, the user name is ignored.
The rate limit is a GCRA held atomically in Redis: `limit` requests a minute, bursts up to `limit`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from urllib.parse import urlencode

from fastapi import Request

from service.api.errors import FrescoError
from service.jobs import keys


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

    def __init__(self, retry_after: float):
        super().__init__(headers={"Retry-After": str(max(1, int(retry_after + 0.999)))})


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "fresco_" + secrets.token_urlsafe(32)


# KEYS[1] the key's GCRA state. ARGV: now (ms), emission interval (ms), burst tolerance (ms).
# Returns {1, 0} when allowed, else {0, ms until the next request is allowed}.
GCRA = """
local now, interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or ARGV[1])
if tat < now then tat = now end
if now < tat - tolerance then return {0, tat - tolerance - now} end
tat = tat + interval
redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil(tat - now + tolerance) + 1000)
return {1, 0}
"""


class Auth:
    def __init__(self, settings, redis):
        self.keys: dict[str, str] = dict(settings.api_keys)  # name -> sha256 hex digest
        self.enabled = bool(self.keys)
        self.limit = settings.rate_limit_per_minute
        self.url_ttl = settings.result_url_ttl_s
        secret = settings.url_signing_secret or "\n".join(sorted(self.keys.values()))
        self._secret = hashlib.sha256(b"fresco-result-urls\0" + secret.encode()).digest()
        self._gcra = redis.register_script(GCRA) if self.enabled and self.limit else None

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
        if self._gcra is None or owner is None:
            return
        interval = 60_000 / self.limit
        allowed, wait_ms = await self._gcra(keys=[keys.rate(owner)],
                                            args=[int(time.time() * 1000), interval, interval * (self.limit - 1)])
        if not int(allowed):
            raise RateLimited(int(wait_ms) / 1000)

    # ---- signed result URLs ----

    def _signature(self, job_id: str, name: str, expires: int) -> str:
        return hmac.new(self._secret, f"{job_id}/{name}:{expires}".encode(), hashlib.sha256).hexdigest()

    def sign(self, job_id: str, name: str) -> str:
        """The query string for a result URL ('' when keys are off)."""
        if not self.enabled:
            return ""
        expires = int(time.time()) + self.url_ttl
        return "?" + urlencode({"expires": expires, "signature": self._signature(job_id, name, expires)})

    def verify(self, job_id: str, name: str, expires: str | None, signature: str | None) -> bool:
        if not self.enabled:
            return True
        if not expires or not signature or not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(self._signature(job_id, name, int(expires)), signature)
