"""A body trickled in a byte at a time is cut off with a 408 after FRESCO_BODY_TIMEOUT_S, on a real uvicorn
server over a raw socket; a body that arrives in time, and reads after the body (an events stream waiting for
its client to leave), are not timed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time

import pytest

from service.api.app import create_app
from service.api.body_timeout import BodyTimeout
from tests.service.api.live_app import serving

TIMEOUT_S = 0.6


@pytest.fixture(scope="module")
def server(app_settings):
    with serving(create_app(app_settings.model_copy(update={"body_timeout_s": TIMEOUT_S}))) as port:
        yield port


def trickle(port: int, path: str, body: bytes, every_s: float, headers: str = "") -> tuple[bytes, float]:
    """Send `body` a byte every `every_s` seconds, then read the answer until the server closes the
    connection: (everything read, seconds from the headers to the close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}"
                  f"Content-Length: {len(body)}\r\n\r\n".encode())
        start, answer = time.monotonic(), b""
        s.setblocking(False)
        for byte in body:
            with contextlib.suppress(OSError):
                s.send(bytes([byte]))
            time.sleep(every_s)
            with contextlib.suppress(BlockingIOError):
                answer += s.recv(65536)
            if answer:
                break
        s.setblocking(True)
        while chunk := s.recv(65536):
            answer += chunk
        return answer, time.monotonic() - start


@pytest.mark.parametrize("path", ["/generate", "/v1/images/generations", "/sdapi/v1/txt2img"])
def test_a_trickled_body_gets_408_and_the_connection_closes(server, path):
    body = json.dumps({"task": "turbo", "prompt": "a lighthouse " * 20}).encode()
    answer, took = trickle(server, path, body, every_s=0.05)  # 250+ bytes at 20/s: 13 s, were it let through
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), head
    assert b"connection: close" in head.lower()
    assert json.loads(payload)["error"]["code"] == "request_timeout"
    assert TIMEOUT_S <= took < TIMEOUT_S + 2


def test_a_body_in_time_is_answered_as_usual(server):
    answer, took = trickle(server, "/generate", b"{not json", every_s=0.01, headers="Connection: close\r\n")
    assert answer.startswith(b"HTTP/1.1 400") and took < TIMEOUT_S


def test_reads_after_the_body_are_not_timed():
    """An app that reads its body, then waits for the client to leave (as an events stream does), longer than
    the timeout: it answers as it would without the middleware."""
    sent = []

    async def app(scope, receive, send):
        assert (await receive())["type"] == "http.request"
        assert (await receive())["type"] == "http.disconnect"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive_gen():
        messages = iter([{"type": "http.request", "body": b"{}", "more_body": False}, {"type": "http.disconnect"}])
        first = True

        async def receive():
            nonlocal first
            if not first:
                await asyncio.sleep(0.3)
            first = False
            return next(messages)
        return receive

    async def send(message):
        sent.append(message)

    async def main():
        scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""}
        await BodyTimeout(app, timeout_s=0.1)(scope, await receive_gen(), send)

    asyncio.run(main())
    assert sent[0]["status"] == 200
