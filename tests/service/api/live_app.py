"""An app served by a real uvicorn server on a thread of the test process (127.0.0.1, a free port): for what
only a real HTTP server shows (a raw socket's bytes, a browser), without starting a process."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Iterator

import uvicorn

from tests.stack import free_port


@contextlib.contextmanager
def serving(app) -> Iterator[int]:
    """Serve `app` (lifespan included) until the block ends; yields the port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
