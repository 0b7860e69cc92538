"""Signed result URLs: with API keys on, a result URL carries an expiring HMAC signature, so a browser
can fetch it without a header. The API signs them in JobViews and checks them (GET /results/...), the
webhook dispatcher signs those in the bodies it sends; so this module imports neither FastAPI nor
service.api.

The secret is FRESCO_URL_SIGNING_SECRET, or by default derived from the API keys' digests (so every
API process and dispatcher with the same keys signs alike). With no API keys, URLs are not signed
and every one is valid.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlencode


class UrlSigner:
    def __init__(self, settings):
        digests = dict(settings.api_keys).values()  # sha256 hex digests of the API keys
        self.enabled = bool(digests)
        self.ttl = settings.result_url_ttl_s
        secret = settings.url_signing_secret or "\n".join(sorted(digests))
        self._secret = hashlib.sha256(b"fresco-result-urls\0" + secret.encode()).digest()

    def _signature(self, job_id: str, name: str, expires: int) -> str:
        return hmac.new(self._secret, f"{job_id}/{name}:{expires}".encode(), hashlib.sha256).hexdigest()

    def sign(self, job_id: str, name: str) -> str:
        """The query string for a result URL ('' when keys are off)."""
        if not self.enabled:
            return ""
        expires = int(time.time()) + self.ttl
        return "?" + urlencode({"expires": expires, "signature": self._signature(job_id, name, expires)})

    def verify(self, job_id: str, name: str, expires: str | None, signature: str | None) -> bool:
        """Whether a result URL's `expires` and `signature` are valid now (always, when keys are off)."""
        if not self.enabled:
            return True
        if not expires or not signature or not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(self._signature(job_id, name, int(expires)), signature)
