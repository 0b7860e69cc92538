"""Typed errors, read off real API answers (an in-process API on a Redis of this module's own, so its
jobs stay queued): one class per status, the failing fields of a 422, Retry-After on 429 and 503."""

from __future__ import annotations

import os
import threading

import pytest

from service.api.auth import digest
from service.client import (APIConnectionError, AsyncClient, AuthenticationError, Client, FrescoError, Job,
                            JobCanceled, JobFailed, NotFoundError, PayloadTooLargeError, RateLimitError,
                            UnavailableError, ValidationError)
from service.client.errors import error_from_response, parse_retry_after
from tests.conftest import free_port, png_data_url
from tests.service.client.conftest import TURBO

ALICE, BOB = "alice-client-key", "bob-client-key"
UNKNOWN_JOB = "00000000-0000-4000-8000-000000000000"


def test_a_422_names_each_failing_field(own_api):
    with Client(http_client=own_api()) as fresco, pytest.raises(ValidationError) as info:
        fresco.submit("turbo", prompt="", width=1001, steps=9)
    error = info.value
    assert (error.status, error.code, error.message) == (422, "validation_error", "request is invalid")
    assert {f["field"] for f in error.fields} == {"prompt", "width", "steps"} and error.request_id
    text = str(error)
    assert text.startswith("request is invalid (422 validation_error): ")
    assert "width: must be a multiple of 8" in text and "steps: must be at most 4" in text


def test_an_unknown_job_is_404(own_api):
    with Client(http_client=own_api()) as fresco:
        for call in (fresco.get, fresco.cancel, lambda job: list(fresco.events(job))):
            with pytest.raises(NotFoundError) as info:
                call(UNKNOWN_JOB)
            assert info.value.status == 404 and info.value.code == "not_found"


def test_a_body_over_the_limit_is_413(own_api):
    with Client(http_client=own_api()) as fresco, pytest.raises(PayloadTooLargeError) as info:
        fresco.submit("img2img", prompt="x", image=b"\x89PNG\r\n\x1a\n" + os.urandom(5 * 1024 * 1024))
    assert info.value.status == 413


def test_api_keys_401_without_one_and_jobs_private_to_their_key(own_api, monkeypatch):
    api = own_api(api_keys={"alice": digest(ALICE), "bob": digest(BOB)}, rate_limit_per_minute=1000)
    with Client(http_client=api, api_key="") as anonymous, pytest.raises(AuthenticationError) as info:
        anonymous.submit("turbo", **TURBO)
    assert info.value.status == 401 and info.value.code == "unauthorized"
    monkeypatch.setenv("FRESCO_API_KEY", ALICE)  # the default key
    with Client(http_client=api) as alice, Client(http_client=api, api_key=BOB) as bob:
        job = alice.submit("img2img", prompt="x", image=png_data_url(64, 64))
        assert alice.get(job).id == job.id
        with pytest.raises(NotFoundError):
            bob.get(job)
        # The stored input's URL is signed: it works without the key, from any client.
        signed = job.params["image"]["url"]
        assert "signature=" in signed and anonymous.fetch(signed).startswith(b"\x89PNG")


def test_the_api_key_goes_only_to_the_api_origin():
    fresco = Client("http://api.example:8000", api_key="secret")
    assert fresco._headers("http://api.example:8000/jobs/x")["Authorization"] == "Bearer secret"
    assert "Authorization" not in fresco._headers("https://bucket.s3.example/results/x/0.png?X-Amz-Signature=y")


def test_a_rate_limited_key_gets_429_with_retry_after(own_api):
    api = own_api(api_keys={"alice": digest(ALICE)}, rate_limit_per_minute=1)
    with Client(http_client=api, api_key=ALICE, max_retries=0) as fresco:
        fresco.submit("turbo", **TURBO)
        with pytest.raises(RateLimitError) as info:
            fresco.submit("turbo", **TURBO)
    assert info.value.status == 429 and info.value.retry_after >= 1


def test_a_full_queue_is_503_and_retried_once_it_frees(own_api):
    """A real condition: the turbo queue capped at one job, and no worker to take it."""
    api = own_api(queue_cap=_caps(turbo=1))
    with Client(http_client=api, max_retries=0) as fresco:
        blocker = fresco.submit("turbo", **TURBO)
        with pytest.raises(UnavailableError) as info:
            fresco.submit("turbo", **TURBO)
        assert (info.value.status, info.value.retry_after) == (503, 10)
        assert "queue is full" in info.value.message
    # Retried: the server asks for 10 s, the client waits at most max_retry_wait; the queue frees meanwhile.
    with Client(http_client=api, max_retries=4, max_retry_wait=0.5) as fresco:
        threading.Timer(0.2, fresco.cancel, [blocker]).start()
        job = fresco.submit("turbo", **TURBO)
    assert job.status == "queued" and job.id != blocker.id


def _caps(**caps) -> dict:
    from service.tasks import TASKS

    return {**{name: task.queue_cap for name, task in TASKS.items()}, **caps}


def test_no_answer_is_an_api_connection_error():
    with Client(f"http://127.0.0.1:{free_port()}", max_retries=1) as fresco:
        with pytest.raises(APIConnectionError) as info:
            fresco.get(UNKNOWN_JOB)
        assert info.value.status is None and "cannot reach" in str(info.value)
        assert not fresco.health() and not fresco.ready()


def test_an_httpx2_client_works_as_http_client_and_its_failures_are_connection_errors():
    """httpx2 (Starlette's TestClient is one; openai and huggingface_hub install it) has its own Timeout and
    error classes: the client sends a timeout both accept and catches both libraries' errors, retrying them."""
    import asyncio

    httpx2 = pytest.importorskip("httpx2")  # where nothing installs it, no client can be one
    calls = []

    def refuse(request):
        calls.append(request.extensions["timeout"])
        raise httpx2.ConnectError("refused", request=request)

    http = httpx2.Client(transport=httpx2.MockTransport(refuse), base_url="http://fresco.test")
    with Client(http_client=http, max_retries=1, max_retry_wait=0.01) as fresco:
        with pytest.raises(APIConnectionError) as info:
            fresco.get(UNKNOWN_JOB)
    assert isinstance(info.value.__cause__, httpx2.ConnectError) and len(calls) == 2  # retried once
    assert calls[0]["connect"] == 30.0 and calls[0]["read"] >= 30.0

    async def async_refused():
        transport = httpx2.MockTransport(refuse)
        async with AsyncClient(http_client=httpx2.AsyncClient(transport=transport, base_url="http://fresco.test"),
                               max_retries=0) as fresco:
            with pytest.raises(APIConnectionError):
                await fresco.get(UNKNOWN_JOB)

    asyncio.run(async_refused())
    assert len(calls) == 3


def test_errors_from_bodies_that_are_not_frescos():
    error = error_from_response(502, {"x-request-id": "abc"}, b"<html>bad gateway</html>")
    assert type(error).__name__ == "ServerError" and error.message == "HTTP 502" and error.request_id == "abc"
    error = error_from_response(403, {}, b"<?xml version='1.0'?><Error><Code>AccessDenied</Code></Error>")
    assert type(error) is FrescoError and error.status == 403
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: now
    assert parse_retry_after("7") == 7.0 and parse_retry_after("soon") is None


def test_a_failed_job_raises_job_failed_with_its_code():
    view = {"id": "j1", "task": "sdxl", "model": "m", "status": "failed", "progress": None, "params": {},
            "error": {"code": "gpu_oom", "message": "out of GPU memory"}}
    job = Job.from_dict(view)
    with pytest.raises(JobFailed) as info:
        job.raise_for_status()
    assert (info.value.code, info.value.job) == ("gpu_oom", job) and "out of GPU memory" in str(info.value)
    assert isinstance(info.value, FrescoError) and not isinstance(info.value, JobCanceled)
    running = Job.from_dict({**view, "status": "running", "error": None})
    assert running.raise_for_status() is running
