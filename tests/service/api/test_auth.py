"""API keys: digests only, 401 without a valid key, jobs private to their key, rate limit, signed URLs."""

from __future__ import annotations

import subprocess
import sys
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.api.auth import digest
from tests.conftest import png_data_url

ALICE, BOB = "alice-secret-key", "bob-secret-key"


@pytest.fixture
def keyed(app_settings):
    settings = app_settings.model_copy(update={
        "api_keys": {"alice": digest(ALICE), "bob": digest(BOB)}, "rate_limit_per_minute": 1000})
    with TestClient(create_app(settings)) as c:
        yield c


def auth(key):
    return {"Authorization": f"Bearer {key}"}


def test_settings_take_digests_not_keys():
    from service.settings import Settings

    s = Settings(api_keys=f"alice:{digest(ALICE)}, bob:{digest(BOB).upper()}")
    assert s.api_keys == {"alice": digest(ALICE), "bob": digest(BOB)}
    with pytest.raises(ValueError):
        Settings(api_keys="alice:plain-text-key")


def test_missing_or_wrong_key_is_401_with_bearer_challenge(keyed):
    for headers in ({}, auth("nope"), {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}):
        r = keyed.post("/generate", json={"task": "turbo", "prompt": "x"}, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["error"]["code"] == "unauthorized"
    assert keyed.get("/models").status_code == 401
    assert keyed.get("/healthz").status_code == 200  # probes and metrics stay open
    assert keyed.get("/metrics").status_code == 200


def test_jobs_belong_to_their_key(keyed):
    job = keyed.post("/generate", json={"task": "turbo", "prompt": "x"}, headers=auth(ALICE)).json()
    assert keyed.get(f"/jobs/{job['id']}", headers=auth(ALICE)).status_code == 200
    unknown = keyed.get("/jobs/00000000-0000-4000-8000-000000000000", headers=auth(BOB))
    for r in (keyed.get(f"/jobs/{job['id']}", headers=auth(BOB)),
              keyed.get(f"/jobs/{job['id']}/events", headers=auth(BOB)),
              keyed.delete(f"/jobs/{job['id']}", headers=auth(BOB))):
        assert r.status_code == 404
        assert r.json()["error"] == unknown.json()["error"]  # the same body as an unknown id
    assert keyed.get(f"/jobs/{job['id']}").status_code == 401
    assert keyed.delete(f"/jobs/{job['id']}", headers=auth(ALICE)).status_code == 202


def test_idempotency_keys_are_per_api_key(keyed):
    body = {"task": "turbo", "prompt": "same"}
    a = keyed.post("/generate", json=body, headers={**auth(ALICE), "Idempotency-Key": "k1"}).json()
    b = keyed.post("/generate", json=body, headers={**auth(BOB), "Idempotency-Key": "k1"}).json()
    assert a["id"] != b["id"]


def test_result_urls_are_signed_and_expire(keyed, app_settings):
    job = keyed.post("/generate", json={"task": "img2img", "prompt": "x", "image": png_data_url(64, 64)},
                     headers=auth(ALICE)).json()
    url = urlsplit(job["params"]["image"]["url"])
    query = parse_qs(url.query)
    assert set(query) == {"expires", "signature"}
    r = keyed.get(f"{url.path}?{url.query}")  # no header needed: the signature is the credential
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert keyed.get(url.path).status_code == 404
    sig = query["signature"][0]
    tampered = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    assert keyed.get(f"{url.path}?expires={query['expires'][0]}&signature={tampered}").status_code == 404
    later = int(query["expires"][0]) + 10
    assert keyed.get(f"{url.path}?expires={later}&signature={sig}").status_code == 404
    past = int(time.time()) - 1
    expired = keyed.app.state.ctx.auth.urls._signature(job["id"], "input.png", past)  # well signed, but expired
    assert keyed.get(f"{url.path}?expires={past}&signature={expired}").status_code == 404


def test_rate_limit_per_key_is_429_with_retry_after(app_settings):
    settings = app_settings.model_copy(update={"api_keys": {"alice": digest(ALICE), "bob": digest(BOB)},
                                               "rate_limit_per_minute": 3})
    with TestClient(create_app(settings)) as c:
        body = {"task": "turbo", "prompt": "x"}
        key = f"rate-{time.monotonic_ns()}"
        c.app.state.ctx.auth.keys[key] = digest(key)  # a fresh key name, so earlier runs do not count
        codes = [c.post("/generate", json=body, headers=auth(key)).status_code for _ in range(5)]
        assert codes[:3] == [202] * 3 and codes[3:] == [429, 429]
        r = c.post("/generate", json=body, headers=auth(key))
        assert 1 <= int(r.headers["retry-after"]) <= 20 and r.json()["error"]["code"] == "rate_limited"
        assert c.post("/generate", json=body, headers=auth(BOB)).status_code == 202  # other keys unaffected


def test_hash_key_cli():
    out = subprocess.run([sys.executable, "-m", "service.cli", "hash-key", "alice", ALICE],
                         capture_output=True, text=True).stdout
    assert out.strip() == f"FRESCO_API_KEYS entry: alice:{digest(ALICE)}"
