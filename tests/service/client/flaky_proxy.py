"""A network between the client and a real Fresco API that misbehaves on purpose: a test double of the
network, never of Fresco. Every request is forwarded to the real API and recorded; a planned fault
answers `503` in the API's place (with `Retry-After`), or forwards the request and then drops the
connection without answering (the job is made, its answer is lost on the way back)."""

from __future__ import annotations

import http.server
import socket
import threading

import httpx

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length", "content-encoding"}


class FlakyProxy:
    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.faults: list[tuple] = []  # for POST /generate, used in order: ("503", retry_after) or ("drop",)
        self.seen: list[dict] = []  # each request: method, path, idempotency key, upstream status and job id
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FlakyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def posts(self) -> list[dict]:
        return [r for r in self.seen if r["method"] == "POST"]

    def handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        record = {"method": h.command, "path": h.path, "key": h.headers.get("Idempotency-Key"),
                  "status": None, "job_id": None}
        self.seen.append(record)
        fault = self.faults.pop(0) if h.command == "POST" and self.faults else None
        if fault and fault[0] == "503":
            return self._answer(h, 503, b'{"error": {"code": "unavailable", "message": "proxy says wait"}}',
                                {"Retry-After": str(fault[1]), "Content-Type": "application/json"})
        headers = {k: v for k, v in h.headers.items() if k.lower() not in HOP_BY_HOP}
        r = httpx.request(h.command, self.upstream + h.path, content=body, headers=headers, timeout=90)
        record["status"] = r.status_code
        if r.headers.get("content-type", "").startswith("application/json"):
            record["job_id"] = r.json().get("id")
        if fault and fault[0] == "drop":
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return None
        self._answer(h, r.status_code, r.content, {k: v for k, v in r.headers.items() if k.lower() not in HOP_BY_HOP})

    @staticmethod
    def _answer(h, status: int, content: bytes, headers: dict) -> None:
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(content)))
        h.end_headers()
        h.wfile.write(content)


def _handler(proxy: FlakyProxy):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            proxy.handle(self)

        do_POST = do_DELETE = do_GET

        def log_message(self, *args):
            pass

    return Handler
