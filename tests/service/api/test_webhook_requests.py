"""`webhook` and `webhook_events_filter` on a request: a 422 naming the field for each rule it breaks
(never echoing the URL), and the accepted one kept out of `params` and reported, without its query,
in the JobView. (Deliveries: tests/service/webhooks/, tests/e2e/test_webhooks.py.)"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.webhooks import signing
from tests.service.api.test_validation import SECRET, assert_rejected, post

TURBO = {"task": "turbo", "prompt": "x", "width": 256, "height": 256}


def app_with(app_settings, **webhook_settings) -> TestClient:
    # No dispatcher here: the session's Redis is shared with other tests' stacks.
    settings = app_settings.model_copy(update={"webhook_secret": signing.new_secret(), "webhook_dispatcher": False,
                                               **webhook_settings})
    return TestClient(create_app(settings))


@pytest.fixture
def strict(app_settings):
    with app_with(app_settings) as c:
        yield c


@pytest.fixture
def local(app_settings):
    with app_with(app_settings, webhook_allow_private=True) as c:
        yield c


def message(r) -> str:
    return r.json()["error"]["fields"][0]["message"]


def test_without_a_secret_the_server_takes_no_webhook(api):
    r = post(api, {**TURBO, "webhook": f"https://example.com/{SECRET}"})
    assert_rejected(r, "webhook")
    assert "FRESCO_WEBHOOK_SECRET" in message(r)


@pytest.mark.parametrize("url, says", [
    (f"http://example.com/{SECRET}", "scheme"),
    (f"ftp://example.com/{SECRET}", "scheme"),
    (f"not a url {SECRET}", "scheme"),
    (f"https://user:{SECRET}@example.com/", "credentials"),
    (f"https://127.0.0.1/{SECRET}", "public address"),
    (f"https://10.1.2.3:8443/{SECRET}", "public address"),
    (f"https://169.254.169.254/{SECRET}", "cloud metadata address"),
    (f"https://[::1]/{SECRET}", "public address"),
    (f"https://localhost/{SECRET}", "public address"),
    (f"https://example.com:99999/{SECRET}", "URL is not valid"),
])
def test_a_url_the_server_may_not_post_to_is_422(strict, url, says):
    r = post(strict, {**TURBO, "webhook": url})
    assert_rejected(r, "webhook")
    assert says in message(r)


@pytest.mark.parametrize("body, field", [
    ({"webhook": "", "webhook_events_filter": ["start"]}, "webhook"),
    ({"webhook": "https://x.example/" + "a" * 2048}, "webhook"),
    ({"webhook": 5}, "webhook"),
    ({"webhook": "http://127.0.0.1/", "webhook_events_filter": []}, "webhook_events_filter"),
    ({"webhook": "http://127.0.0.1/", "webhook_events_filter": ["start", "start"]}, "webhook_events_filter"),
    ({"webhook": "http://127.0.0.1/", "webhook_events_filter": [SECRET]}, "webhook_events_filter[0]"),
    ({"webhook": "http://127.0.0.1/", "webhook_events_filter": "completed"}, "webhook_events_filter"),
    ({"webhook_events_filter": ["start"]}, "webhook_events_filter"),  # a filter without a webhook
])
def test_malformed_webhook_fields_are_422(local, body, field):
    assert_rejected(post(local, {**TURBO, **body}), field)


def test_private_targets_and_http_when_the_server_allows_them(local):
    url = "http://127.0.0.1:9/hook"
    r = post(local, {**TURBO, "webhook": f"{url}?token={SECRET}", "webhook_events_filter": ["start", "completed"]})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["webhook"] == {"url": url, "events": ["start", "completed"], "delivered": False, "attempts": 0,
                              "last_status": None}
    assert "webhook" not in job["params"] and "webhook_events_filter" not in job["params"]
    again = local.get(f"/jobs/{job['id']}").json()
    assert again["webhook"] == job["webhook"] and SECRET not in str(again)
    local.delete(f"/jobs/{job['id']}")


def test_a_job_without_a_webhook_shows_null(local):
    r = post(local, TURBO)
    assert r.status_code == 202 and r.json()["webhook"] is None
    local.delete(f"/jobs/{r.json()['id']}")
