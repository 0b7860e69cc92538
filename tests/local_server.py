"""A local HTTP server for the URL-fetching tests (input images, adapter files): routes set per path,
requests counted per path. It listens on 127.0.0.2, a loopback address those tests allow explicitly,
so nothing leaves this machine."""

from __future__ import annotations

import collections
import contextlib
import http.server
import threading
import time

ADDRESS = "127.0.0.2"


class LocalServer:
    """`serve(path, body)`: 200 with the body (`stream=True`: no Content-Length, the body ends when the
    connection closes); `redirect(path, location)`: 302; `slow(path, seconds)`: headers, then silence.
    Anything else is a 404. Each returns the full URL; `hits(path)` counts the requests."""

    def __init__(self, port: int):
        self.port = port
        self.base = f"http://{ADDRESS}:{port}"
        self.routes: dict[str, tuple] = {}
        self.counts: collections.Counter = collections.Counter()
        self.lock = threading.Lock()

    def serve(self, path: str, body: bytes, content_type: str = "application/octet-stream",
              stream: bool = False) -> str:
        self.routes[path] = ("body", body, content_type, stream)
        return self.base + path

    def redirect(self, path: str, location: str) -> str:
        self.routes[path] = ("redirect", location)
        return self.base + path

    def slow(self, path: str, seconds: float) -> str:
        self.routes[path] = ("slow", seconds)
        return self.base + path

    def hits(self, path: str) -> int:
        with self.lock:
            return self.counts[path]


def _handler(server: LocalServer):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            with server.lock:
                server.counts[self.path] += 1
            kind, *args = server.routes.get(self.path, ("404",))
            if kind == "body":
                body, content_type, stream = args
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                if not stream:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif kind == "redirect":
                self.send_response(302)
                self.send_header("Location", args[0])
                self.end_headers()
            elif kind == "slow":
                self.send_response(200)
                self.end_headers()
                time.sleep(args[0])
            else:
                self.send_response(404)
                self.end_headers()

        def log_message(self, *args):
            pass

    return Handler


@contextlib.contextmanager
def local_server():
    httpd = http.server.ThreadingHTTPServer((ADDRESS, 0), http.server.BaseHTTPRequestHandler)
    server = LocalServer(httpd.server_address[1])
    httpd.RequestHandlerClass = _handler(server)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
