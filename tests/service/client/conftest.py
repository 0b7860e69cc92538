"""Fixtures for the client's tests: a `Client` on the session's real stack, a flaky network in front of
it, and an in-process API of its own Redis (no worker: its jobs stay queued) with settings per test."""

from __future__ import annotations

import contextlib

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.client import Client
from tests.service.client.flaky_proxy import FlakyProxy

TURBO = {"prompt": "a lighthouse", "width": 256, "height": 256}


@pytest.fixture
def fresco(stack):
    with Client(stack.url) as c:
        yield c


@pytest.fixture
def proxy(stack):
    with FlakyProxy(stack.url) as p:
        yield p


@pytest.fixture
def own_api(app_settings, module_server, module_redis):
    """`own_api(**settings)`: a TestClient of an API on the module's own Redis, emptied per test."""

    with contextlib.ExitStack() as stack:
        def make(**update) -> TestClient:
            settings = app_settings.model_copy(update={"redis_url": module_server.url, **update})
            return stack.enter_context(TestClient(create_app(settings)))

        yield make
