"""Real parts only: a real Redis server the tests start (or FRESCO_TEST_REDIS_URL), real API and worker
processes, real diffusers pipelines with tiny random weights."""

from __future__ import annotations

import base64
import io
import os
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests import scheduling
from tests.scheduling import pytest_configure, pytest_configure_node, pytest_xdist_make_scheduler  # noqa: F401
from tests.stack import ROOT, Stack, free_port, wait_until_ok  # noqa: F401  (the tests' one launcher)
# Each group of tests by topic gets its directory's marker (registered in pyproject.toml), so that
# `pytest -m "not (faults or deploy or bench)"` (`make test-fast`) runs the quick part.
MARKED_DIRECTORIES = ("e2e", "faults", "deploy", "bench")


def _parts(item) -> tuple[str, ...]:
    return Path(item.fspath).relative_to(ROOT / "tests").parts


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = _parts(item)
        if len(parts) > 1 and parts[0] in MARKED_DIRECTORIES:
            item.add_marker(getattr(pytest.mark, parts[0]))
    scheduling.arrange(config, items, _parts)  # under pytest-xdist: which tests run together, in what order


def png_data_url(width=320, height=256, color=(180, 40, 40), fmt="PNG") -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, fmt)
    mime = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}[fmt]
    return f"data:image/{mime};base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real Redis: the one FRESCO_TEST_REDIS_URL names, else an embedded server with AOF on."""
    url = os.environ.get("FRESCO_TEST_REDIS_URL")
    if url:
        yield url
        return
    from service.redis import EmbeddedRedis

    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    yield server.url
    server.close()


@pytest.fixture(scope="module")
def module_server(tmp_path_factory):
    """An embedded Redis of the test module's own: no stack, worker or reaper of another test sees its
    keys (the session's `redis_url` is shared with running stacks, whose reapers sweep every job)."""
    from service.redis import EmbeddedRedis

    server = EmbeddedRedis(tmp_path_factory.mktemp("module-redis"))
    yield server
    server.shutdown()


@pytest.fixture
def module_redis(module_server):
    """A sync client of the module's own Redis, emptied for each test."""
    from service.redis import sync_client

    r = sync_client(module_server.url)
    r.flushdb()
    yield r
    r.close()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fresco-data")


@pytest.fixture(scope="session")
def stack(redis_url, data_dir):
    with Stack(redis_url, data_dir) as s:
        yield s


@pytest.fixture
def client(stack):
    with stack.client() as c:
        yield c


@pytest.fixture(scope="session")
def app_settings(redis_url, tmp_path_factory):
    from service.settings import Settings

    return Settings(redis_url=redis_url, data_dir=tmp_path_factory.mktemp("api-data"), max_pixels=2048 * 2048,
                    max_image_bytes=2 * 1024 * 1024, max_body_bytes=4 * 1024 * 1024)


@pytest.fixture
def api(app_settings):
    """The API in-process (no worker): for validation and other API-only behaviour."""
    from fastapi.testclient import TestClient

    from service.api.app import create_app

    with TestClient(create_app(app_settings)) as c:
        yield c


def wait_status(client: httpx.Client, job_id: str, statuses: set[str], timeout: float = 60) -> dict:
    terminal = {"succeeded", "failed", "canceled"}
    deadline = time.time() + timeout
    while time.time() < deadline:
        # Long-poll for terminal states; poll briskly when waiting for `running`.
        wait = 1 if statuses <= terminal else 0
        job = client.get(f"/jobs/{job_id}", params={"wait": wait}).json()
        if job["status"] in statuses:
            return job
        if not wait:
            time.sleep(0.02)
    raise AssertionError(f"job {job_id} never reached {statuses}; last {job['status']}")
