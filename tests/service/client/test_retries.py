"""Retries through a flaky network in front of the real stack (tests/service/client/flaky_proxy.py): a 503
is retried after its Retry-After, a lost answer is retried into the same job (same Idempotency-Key),
and a 4xx is never sent twice."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.client import AsyncClient, Client, UnavailableError, ValidationError
from tests.service.client.conftest import TURBO


def test_a_503_is_retried_after_its_retry_after(proxy):
    proxy.faults = [("503", 1)]
    started = time.monotonic()
    with Client(proxy.url) as fresco:
        job = fresco.submit("turbo", **TURBO)
        assert fresco.wait(job).succeeded
    assert time.monotonic() - started >= 1.0
    first, second = proxy.posts()
    assert first["status"] is None and second["status"] == 202 and second["job_id"] == job.id
    assert first["key"] and first["key"] == second["key"]


def test_retries_stop_at_max_retries(proxy):
    proxy.faults = [("503", 0)] * 3
    with Client(proxy.url, max_retries=2) as fresco, pytest.raises(UnavailableError) as info:
        fresco.submit("turbo", **TURBO)
    assert info.value.retry_after == 0 and info.value.message == "proxy says wait"
    assert len(proxy.posts()) == 3


def test_an_answer_lost_on_the_way_back_is_retried_into_the_same_job(proxy):
    proxy.faults = [("drop",)]
    with Client(proxy.url) as fresco:
        job = fresco.submit("turbo", **TURBO)
    first, second = proxy.posts()
    assert first["status"] == second["status"] == 202  # the API made the job both times it was asked...
    assert first["job_id"] == second["job_id"] == job.id  # ...and it is one job
    assert first["key"] == second["key"]


def test_a_4xx_is_never_retried(proxy):
    with Client(proxy.url) as fresco, pytest.raises(ValidationError):
        fresco.submit("turbo", prompt="x", width=1001)
    assert len(proxy.posts()) == 1


def test_each_submit_has_its_own_idempotency_key(proxy):
    with Client(proxy.url) as fresco:
        a, b = fresco.submit("turbo", **TURBO), fresco.submit("turbo", **TURBO)
    assert a.id != b.id and proxy.posts()[0]["key"] != proxy.posts()[1]["key"]


def test_the_async_client_retries_alike(proxy):
    proxy.faults = [("503", 1), ("drop",)]

    async def main():
        async with AsyncClient(proxy.url) as fresco:
            return await fresco.submit("turbo", **TURBO)

    started = time.monotonic()
    job = asyncio.run(main())
    assert time.monotonic() - started >= 1.0
    posts = proxy.posts()
    assert len(posts) == 3 and len({p["key"] for p in posts}) == 1
    assert posts[1]["job_id"] == posts[2]["job_id"] == job.id
