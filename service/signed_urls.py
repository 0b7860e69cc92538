"""Signed result URLs: with API keys on, a result URL carries an expiring HMAC signature, so a browser
can fetch it without a header. The API signs them in JobViews and checks them (GET /results/...), the
webhook dispatcher signs those in the bodies it sends; so this module imports neither FastAPI nor
service.api.

The secret is FRESCO_URL_SIGNING_SECRET. Unset, it is a random one made by whichever process needs it
first and kept where every process that shares the jobs finds it: in Redis (`SET NX`, with
FRESCO_REDIS_URL: every API process and dispatcher on every host that shares that Redis agrees), or,
with the embedded Redis (a unix socket: one host), in a file under FRESCO_DATA_DIR created atomically
with mode 0600. Nothing about it follows from the API keys or any other setting. A URL's `expires` is
refused beyond the configured TTL from now (plus a little clock skew): no signature lives longer.
With no API keys, URLs are not signed and every one is valid.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

from service.jobs.keys import URL_SIGNING_SECRET as REDIS_KEY

SECRET_FILE = "url-signing-secret"
CLOCK_SKEW_S = 60  # how far another host's clock may run ahead of this one's when it signs


def _secret_from_redis(url: str) -> str:
    """The shared secret kept in Redis: the first process to ask makes it (SET NX), every other reads it."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.set(REDIS_KEY, secrets.token_hex(32), nx=True)
        value = client.get(REDIS_KEY)
    finally:
        client.close()
    if not value:  # flushed between the two commands: the next use tries again
        raise redis.ConnectionError("the URL signing secret vanished from Redis")
    return value.decode()


def _secret_from_file(data_dir: Path) -> str:
    """The secret kept in `<data_dir>/url-signing-secret` (mode 0600): written whole to a temporary file,
    then linked to its name, which fails if another process got there first; then read by everyone."""
    path = Path(data_dir) / SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process made it first: use theirs
        finally:
            tmp.unlink(missing_ok=True)
    value = path.read_text().strip()
    if not value:
        raise ValueError(f"{path} is empty: remove it (a new secret is made) or set FRESCO_URL_SIGNING_SECRET")
    return value


class UrlSigner:
    def __init__(self, settings):
        self.enabled = bool(settings.api_keys)
        self.ttl = settings.result_url_ttl_s
        self._settings = settings
        self._secret: bytes | None = None
        self._lock = threading.Lock()

    @property
    def secret(self) -> bytes:
        """The HMAC key, found (or made) on first use: a process starts even while Redis is down, and a
        request that needs the key then gets Redis's error (503) instead."""
        if self._secret is None:
            with self._lock:
                if self._secret is None:
                    s = self._settings
                    if s.url_signing_secret:
                        shared = s.url_signing_secret
                    elif s.redis_url:
                        shared = _secret_from_redis(s.redis_url)
                    else:
                        shared = _secret_from_file(s.data_dir)
                    self._secret = hashlib.sha256(b"fresco-result-urls\0" + shared.encode()).digest()
        return self._secret

    def _signature(self, job_id: str, name: str, expires: int) -> str:
        return hmac.new(self.secret, f"{job_id}/{name}:{expires}".encode(), hashlib.sha256).hexdigest()

    def sign(self, job_id: str, name: str) -> str:
        """The query string for a result URL ('' when keys are off)."""
        if not self.enabled:
            return ""
        expires = int(time.time()) + self.ttl
        return "?" + urlencode({"expires": expires, "signature": self._signature(job_id, name, expires)})

    def verify(self, job_id: str, name: str, expires: str | None, signature: str | None) -> bool:
        """Whether a result URL's `expires` and `signature` are valid now (always, when keys are off): not
        expired, not further off than the TTL (with CLOCK_SKEW_S), and signed with this secret."""
        if not self.enabled:
            return True
        if not expires or not signature or not expires.isascii() or not expires.isdigit() or len(expires) > 12:
            return False
        at = time.time()
        if not at <= int(expires) <= at + self.ttl + CLOCK_SKEW_S:
            return False
        return hmac.compare_digest(self._signature(job_id, name, int(expires)), signature)
