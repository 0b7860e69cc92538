"""Fair share through the whole service: API keys with weights, priorities and caps (the JSON form of
FRESCO_API_KEYS), one worker taking their jobs in turn (workers/fair_queue.py), and what clients see
(`queue_position`, 422 above `max_priority`, 429 over `max_queued`)."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from service.api.auth import digest
from tests.stack import Stack

KEYS = {"flood": "fresco-fair-flood", "light": "fresco-fair-light", "capped": "fresco-fair-capped"}
LIMITS = {"flood": {"max_priority": "normal"}, "light": {"weight": 2}, "capped": {"max_queued": 2}}
JOB = {"task": "turbo", "prompt": "x", "width": 256, "height": 256, "steps": 2}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    api_keys = {name: {"digest": digest(key), **LIMITS[name]} for name, key in KEYS.items()}
    env = {"FRESCO_API_KEYS": json.dumps(api_keys), "FRESCO_RATE_LIMIT_PER_MINUTE": "0",
           "FRESCO_STEP_DELAY_S": "0.15"}  # each job takes about 0.3 s: a backlog forms
    with Stack(None, tmp_path_factory.mktemp("fair-stack"), env, profile=("tiny-turbo",)) as s:
        yield s


def client(stack, name: str) -> httpx.Client:
    return httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {KEYS[name]}"}, timeout=30)


def wait_all(c: httpx.Client, ids: list[str], timeout: float = 90) -> list[dict]:
    deadline = time.monotonic() + timeout
    views = []
    for job_id in ids:
        while True:
            view = c.get(f"/jobs/{job_id}", params={"wait": 10}).json()
            if view["status"] in ("succeeded", "failed", "canceled") or time.monotonic() > deadline:
                break
        views.append(view)
    return views


def test_a_flooding_key_does_not_hold_back_another_keys_jobs(stack):
    with client(stack, "flood") as flood, client(stack, "light") as light:
        flood_ids = [flood.post("/generate", json=JOB).json()["id"] for _ in range(12)]
        light_ids = [light.post("/generate", json=JOB).json()["id"] for _ in range(2)]
        positions = [light.get(f"/jobs/{i}").json()["queue_position"] for i in light_ids]
        assert all(p is not None and p <= 3 for p in positions), positions  # not behind the whole flood
        light_views = wait_all(light, light_ids)
        flood_views = wait_all(flood, flood_ids)
    assert all(v["status"] == "succeeded" for v in light_views + flood_views)
    last_light = max(v["finished_at"] for v in light_views)
    flood_before = sum(v["finished_at"] < last_light for v in flood_views)
    assert flood_before <= 5, flood_before  # first come, first served: all 12 would have been before


def test_a_priority_above_the_keys_max_priority_is_422(stack):
    with client(stack, "flood") as flood:
        r = flood.post("/generate", json={**JOB, "priority": "high"})
        assert r.status_code == 422
        assert [f["field"] for f in r.json()["error"]["fields"]] == ["priority"]
        assert flood.post("/generate", json={**JOB, "priority": "low"}).status_code in (200, 201, 202)
    with client(stack, "light") as light:
        r = light.post("/generate", json={**JOB, "priority": "high"})
        assert r.status_code in (200, 201, 202) and wait_all(light, [r.json()["id"]])[0]["status"] == "succeeded"
        assert light.post("/generate", json={**JOB, "priority": "urgent"}).status_code == 422


def test_over_max_queued_is_429_with_retry_after_and_nothing_is_lost(stack):
    with client(stack, "capped") as capped, client(stack, "flood") as flood:
        blockers = [flood.post("/generate", json=JOB).json()["id"] for _ in range(3)]  # keep the worker busy
        accepted, refused = [], []
        for _ in range(4):
            r = capped.post("/generate", json=JOB)
            (accepted if r.status_code < 300 else refused).append(r)
        assert len(accepted) == 2 and len(refused) == 2
        assert all(r.status_code == 429 and int(r.headers["Retry-After"]) >= 1 for r in refused)
        assert "max_queued" in refused[0].json()["error"]["message"]
        views = wait_all(capped, [r.json()["id"] for r in accepted])
        assert all(v["status"] == "succeeded" for v in views)
        assert capped.post("/generate", json=JOB).status_code < 300  # room again
        wait_all(flood, blockers)
