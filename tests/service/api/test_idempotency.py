"""An Idempotency-Key whose first request died between its claim and its enqueue (Redis gone before it
could let go, as in the chaos soak) frees itself after the claim's TTL, and a retry makes the job: the
key is never held for the whole idempotency TTL by a request that will never enqueue."""

from __future__ import annotations

import time
import uuid

import pytest
from fastapi.testclient import TestClient
from redis.exceptions import ConnectionError as RedisConnectionError

from service.api import idempotency
from service.api import submit as submit_module
from service.api.app import create_app

BODY = {"task": "turbo", "prompt": "a lighthouse"}


@pytest.fixture
def client(app_settings):
    with TestClient(create_app(app_settings)) as c:
        yield c


def test_a_claim_left_by_a_request_that_died_frees_its_key_and_a_retry_makes_one_job(client, monkeypatch):
    monkeypatch.setattr(idempotency, "CLAIM_TTL_S", 1)
    monkeypatch.setattr(idempotency, "WAIT_S", 0.2)
    real_submit, real_release = submit_module.protocol.submit, idempotency.release

    class RedisGone:  # the submit script's call, with Redis killed under it
        async def arun(self, redis):
            raise RedisConnectionError("Connection refused")

    async def cannot_let_go(*args, **kwargs):
        raise RedisConnectionError("Connection refused")

    monkeypatch.setattr(submit_module.protocol, "submit", lambda *args, **kwargs: RedisGone())
    monkeypatch.setattr(idempotency, "release", cannot_let_go)
    headers = {"Idempotency-Key": uuid.uuid4().hex}
    first = client.post("/generate", json=BODY, headers=headers)
    assert first.status_code == 503 and "Retry-After" in first.headers

    monkeypatch.setattr(submit_module.protocol, "submit", real_submit)
    monkeypatch.setattr(idempotency, "release", real_release)
    held = client.post("/generate", json=BODY, headers=headers)  # the dead request's claim still holds it
    assert held.status_code == 409 and held.headers["Retry-After"] == "1"

    time.sleep(1.1)  # the claim's TTL
    retried = client.post("/generate", json=BODY, headers=headers)
    assert retried.status_code == 202, retried.text
    again = client.post("/generate", json=BODY, headers=headers)
    assert again.status_code == 202 and again.json()["id"] == retried.json()["id"]
    client.delete(f"/jobs/{retried.json()['id']}")
