"""A real webhook receiver for the webhook tests: an HTTP server in a thread on 127.0.0.1 that verifies
every delivery's signature with `standardwebhooks` (the spec's reference verifier, not Fresco's code),
records what it got, and answers as a test tells it: a status (with a Retry-After), after a delay, or
not at all (stopped: connection refused; `start()` listens again on the same port)."""

from __future__ import annotations

import http.server
import threading
import time
from collections import deque
from dataclasses import dataclass

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


@dataclass(frozen=True)
class Received:
    id: str  # webhook-id
    timestamp: int  # webhook-timestamp
    type: str  # job.start | job.progress | job.completed
    data: dict  # the JobView
    body: bytes
    status: int  # what the receiver answered


class Receiver:
    def __init__(self, secret: str):
        self.verifier = Webhook(secret)
        self.lock = threading.Lock()
        self.received: list[Received] = []  # verified deliveries, in arrival order
        self.invalid = 0  # requests whose signature did not verify
        self.in_flight = 0  # requests being answered (slowly, with a `delay`)
        self.plan: deque[int] = deque()  # statuses for the next requests, then `status`
        self.status, self.retry_after, self.delay = 200, None, 0.0
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self.port = 0
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> "Receiver":
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening: deliveries meet a refused connection until `start()`."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def answer(self, status: int = 200, *, retry_after: int | None = None, delay: float = 0.0,
               first: list[int] = ()) -> None:
        """Answer `status` from now on (after the statuses in `first`, one request each), after `delay` s."""
        with self.lock:
            self.status, self.retry_after, self.delay = status, retry_after, delay
            self.plan = deque(first)

    def of_job(self, job_id: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.data["id"] == job_id]

    def wait_for(self, condition, timeout: float = 30.0, what: str = "deliveries"):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; received {[(r.type, r.status) for r in self.received]}")

    def _receive(self, headers: dict, body: bytes) -> tuple[int, dict]:
        try:
            payload = self.verifier.verify(body, headers)
        except WebhookVerificationError:
            with self.lock:
                self.invalid += 1
            return 400, {}
        with self.lock:
            status = self.plan.popleft() if self.plan else self.status
            extra = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
            self.received.append(Received(headers["webhook-id"], int(headers["webhook-timestamp"]), payload["type"],
                                          payload["data"], body, status))
        return status, extra


def _handler(receiver: Receiver):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("content-length", 0))
            body = self.rfile.read(length)
            if len(body) < length:
                return  # the sender died mid-request (a dispatcher killed while sending): no delivery to verify
            with receiver.lock:
                receiver.in_flight += 1
            time.sleep(receiver.delay)
            status, extra = receiver._receive({k.lower(): v for k, v in self.headers.items()}, body)
            with receiver.lock:
                receiver.in_flight -= 1
            try:
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()
            except OSError:
                pass  # the sender is gone (killed mid-attempt, or timed out): it was recorded all the same

        def log_message(self, *args):
            pass

    return Handler


def types(received: list[Received]) -> list[str]:
    return [r.type for r in received]



def stack_env(secret: str, **extra: str) -> dict[str, str]:
    """A Stack's settings for webhook tests: this secret, the local receiver allowed, quick retries."""
    return {"FRESCO_WEBHOOK_SECRET": secret, "FRESCO_WEBHOOK_ALLOW_PRIVATE": "true", "FRESCO_WEBHOOK_BACKOFF_S": "0.1",
            **extra}
