"""Logging: readable lines locally, JSON lines in production (FRESCO_LOG_FORMAT=json).

No line shows a URL's query string: a webhook's token, a signed URL's signature, a LoRA URL's token are
there. Every record that reaches Fresco's handler (its own, httpx's `HTTP Request: POST https://...?...`,
uvicorn's access lines) has the query of each URL and request path in it replaced by `?<redacted>`, its
traceback included.
"""

from __future__ import annotations

import json
import logging
import re
import time

REDACTED = "?<redacted>"
# A URL (http, https, ws...) or an absolute path, then its query: everything from `?` to the next space,
# quote or bracket, and the fragment after it.
_QUERY = re.compile(r"""((?:\b[a-zA-Z][a-zA-Z0-9+.-]*://|/)[^\s?#"'<>]*)\?[^\s"'<>]+""")


def redact_queries(text: str) -> str:
    """`text` with the query string (and fragment) of each URL or path in it replaced by `?<redacted>`."""
    return _QUERY.sub(lambda m: m.group(1) + REDACTED, text) if "?" in text else text


class RedactQueries(logging.Filter):
    """Renders a record's message without URL queries (its arguments merged in first, since the URL is
    usually one of them), and its traceback the same way: then every formatter prints it safely."""

    _traceback = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg, record.args = redact_queries(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._traceback.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_queries(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_queries(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    FIELDS = ("job_id", "task", "model", "worker")

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        for key in self.FIELDS:
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_text or record.exc_info:
            out["exc"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(settings) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RedactQueries())
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
