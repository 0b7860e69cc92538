"""No log line shows a URL's query string (a webhook's token, a signed URL's signature, a LoRA URL's
token): httpx's own `HTTP Request:` lines of a guarded fetch, uvicorn's access lines and tracebacks,
in both log formats, through the handler every Fresco process installs (service/logs.py)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from service.fetch import fetch_public_url
from service.logs import configure_logging, redact_queries
from service.settings import Settings
from tests.local_server import ADDRESS, local_server

TOKEN = "s3cr3t-t0ken-4f9a"


@pytest.fixture
def logging_as():
    """configure_logging(format) as a Fresco process runs it; the root logger put back afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level

    def configure(log_format: str) -> None:
        configure_logging(Settings(log_format=log_format, log_level="INFO"))

    yield configure
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


@pytest.fixture(scope="module")
def server():
    with local_server() as srv:
        srv.serve(f"/lora.safetensors?token={TOKEN}&x=1", b"weights")  # routed by path and query
        yield srv


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_httpx_request_lines_show_no_query(logging_as, capsys, server, log_format):
    logging_as(log_format)
    url = f"{server.base}/lora.safetensors?token={TOKEN}&x=1"
    body = asyncio.run(fetch_public_url(url, schemes=["http"], allowed_networks=[f"{ADDRESS}/32"],
                                        max_bytes=1000, timeout_s=5))
    assert body == b"weights"
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "HTTP Request" in line]
    assert lines, err  # httpx logged the request...
    assert TOKEN not in err and "x=1" not in err  # ...without its query
    assert "/lora.safetensors?<redacted>" in lines[0]
    if log_format == "json":
        record = json.loads(lines[0])
        assert record["logger"] == "httpx" and record["msg"].endswith(' 200 OK"')


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_access_lines_arguments_and_tracebacks_show_no_query(logging_as, capsys, log_format):
    logging_as(log_format)
    # uvicorn's access line: the request path (a signed result URL's) is an argument
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET",
                                             f"/results/job/0.png?expires=1&sig={TOKEN}", "1.1", 200)
    try:
        raise RuntimeError(f"could not reach https://hooks.example/in?token={TOKEN}")
    except RuntimeError:
        logging.getLogger("fresco.test").exception("delivery to %s failed", f"https://hooks.example/in?t={TOKEN}")
    err = capsys.readouterr().err
    assert TOKEN not in err
    assert '"GET /results/job/0.png?<redacted> HTTP/1.1" 200' in err.replace('\\"', '"')
    assert err.count("https://hooks.example/in?<redacted>") >= 2  # the message and the traceback


def test_redaction_keeps_the_rest_of_the_line():
    assert redact_queries("no URL here? none") == "no URL here? none"
    assert redact_queries("100% done, see https://h.example/a") == "100% done, see https://h.example/a"
    assert redact_queries("'https://[::1]:8/a.safetensors?t=1#f' then /p?q=2 and /r") == \
        "'https://[::1]:8/a.safetensors?<redacted>' then /p?<redacted> and /r"
