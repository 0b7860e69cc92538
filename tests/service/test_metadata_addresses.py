"""The cloud metadata addresses are refused for webhooks, image URLs and adapter URLs whatever the
settings allow (FRESCO_WEBHOOK_ALLOW_PRIVATE, FRESCO_WEBHOOK_ALLOW_NETWORKS, FRESCO_IMAGE_URL_ALLOW_NETWORKS):
as literals, in their IPv6 disguises, and behind names that resolve to them, both when a request is
validated and when a guarded request connects (service/fetch.py `pin`). And FRESCO_WEBHOOK_ALLOW_NETWORKS
exempts the networks it names, and only those, from webhooks' public-only rule. Nothing here connects
anywhere: every refused address is refused before a connection is made."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.api.app import create_app
from service.fetch import (ANY_ADDRESS, METADATA_REFUSED, FetchRejected, address_problem, fetch_public_url,
                           guarded_client, pin, post_public_url)
from service.settings import Settings
from service.webhooks import signing
from tests.service.api.test_validation import assert_rejected, post

EVERYWHERE = [ipaddress.ip_network(n) for n in ANY_ADDRESS]
TURBO = {"task": "turbo", "prompt": "x", "width": 256, "height": 256}

METADATA_ADDRESSES = ["169.254.169.254", "fd00:ec2::254", "100.100.100.200", "169.254.170.2", "168.63.129.16",
                      "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1", "::a9fe:a9fe",
                      "::ffff:100.100.100.200"]
# Hosts that are no IP literal to a URL parser, but resolve (numerically, without DNS) to 169.254.169.254.
METADATA_NAMES = ["2852039166", "0xa9fea9fe", "0251.0376.0251.0376", "169.254.43518"]


@pytest.mark.parametrize("address", METADATA_ADDRESSES)
def test_metadata_addresses_are_refused_even_in_allowed_networks(address):
    assert address_problem(address, EVERYWHERE) == METADATA_REFUSED
    assert address_problem(address, [ipaddress.ip_network(address)]) == METADATA_REFUSED


def test_other_addresses_follow_the_allowed_networks():
    assert address_problem("169.254.169.253", EVERYWHERE) is None  # link-local, not metadata: allowed there
    assert address_problem("169.254.169.253") is not None
    assert address_problem("10.0.0.5", [ipaddress.ip_network("10.0.0.0/8")]) is None
    assert address_problem("8.8.8.8") is None


@pytest.mark.parametrize("host", METADATA_NAMES + ["169.254.169.254", "[fd00:ec2::254]"])
def test_names_that_resolve_to_metadata_are_refused_when_connecting(host):
    """`pin` runs before every guarded connection (webhook attempts, image and adapter fetches): a name
    that resolves to a metadata address then (DNS rebinding) is refused there too."""
    with pytest.raises(FetchRejected, match="metadata"):
        asyncio.run(pin(f"http://{host}/latest/meta-data/", ["http"], EVERYWHERE))

    async def deliver():
        async with guarded_client() as client:
            await post_public_url(client, f"http://{host}/hook", b"{}", {}, schemes=["http"],
                                  allowed_networks=ANY_ADDRESS, timeout_s=5)

    with pytest.raises(FetchRejected, match="metadata"):
        asyncio.run(deliver())
    with pytest.raises(FetchRejected, match="metadata"):  # what the worker fetches adapter files with
        asyncio.run(fetch_public_url(f"http://{host}/a.safetensors", schemes=["http"], allowed_networks=ANY_ADDRESS,
                                     max_bytes=1000, timeout_s=5))


def app_with(app_settings, **update) -> TestClient:
    # No dispatcher: the session's Redis is shared with other tests' stacks.
    settings = app_settings.model_copy(update={"webhook_secret": signing.new_secret(), "webhook_dispatcher": False,
                                               **update})
    return TestClient(create_app(settings))


def field_message(r, field: str) -> str:
    assert_rejected(r, field)
    return [f["message"] for f in r.json()["error"]["fields"] if f["field"] == field][0]


LITERALS = ["169.254.169.254", "[fd00:ec2::254]", "100.100.100.200", "[::ffff:a9fe:a9fe]"]


@pytest.mark.parametrize("host", LITERALS + METADATA_NAMES)
def test_metadata_webhooks_and_image_urls_are_422_whatever_the_settings(app_settings, host):
    with app_with(app_settings, webhook_allow_private=True, webhook_allow_networks=["0.0.0.0/0"],
                  allow_image_urls=True, image_url_schemes=["http", "https"],
                  image_url_allow_networks=ANY_ADDRESS) as api:
        r = post(api, {**TURBO, "webhook": f"http://{host}/latest/meta-data/"})
        assert "metadata" in field_message(r, "webhook")
        r = post(api, {"task": "img2img", "prompt": "x", "image": f"http://{host}/latest/x.png"})
        assert "metadata" in field_message(r, "image")


@pytest.mark.parametrize("host", LITERALS)
def test_a_metadata_adapter_url_is_422(app_settings, host):
    """A literal address is refused at once; a name is resolved, and refused, by the worker's fetch
    (`fetch_public_url` above)."""
    with app_with(app_settings, allow_adapter_urls=True, image_url_schemes=["http", "https"],
                  image_url_allow_networks=ANY_ADDRESS) as api:
        r = post(api, {**TURBO, "loras": [{"url": f"http://{host}/a.safetensors"}]})
        assert "metadata" in field_message(r, "loras[0].url")


def test_webhook_allow_networks_exempts_those_networks_only(app_settings):
    with app_with(app_settings) as strict:
        assert "public address" in field_message(post(strict, {**TURBO, "webhook": "https://127.0.0.1:9/h"}),
                                                 "webhook")
    with app_with(app_settings, webhook_allow_networks=["127.0.0.0/8", "169.254.0.0/16"]) as api:
        r = post(api, {**TURBO, "webhook": "https://127.0.0.1:9/hook?token=x"})
        assert r.status_code == 202, r.text
        assert "public address" in field_message(post(api, {**TURBO, "webhook": "https://10.0.0.1/h"}), "webhook")
        assert "scheme" in field_message(post(api, {**TURBO, "webhook": "http://127.0.0.1:9/h"}), "webhook")
        assert "metadata" in field_message(post(api, {**TURBO, "webhook": "https://169.254.169.254/h"}), "webhook")


def test_allowed_networks_settings_are_cidrs(monkeypatch):
    monkeypatch.setenv("FRESCO_WEBHOOK_ALLOW_NETWORKS", "10.0.0.0/8, fd12::/16")
    assert Settings().webhook_allow_networks == ["10.0.0.0/8", "fd12::/16"]
    for name in ("FRESCO_WEBHOOK_ALLOW_NETWORKS", "FRESCO_IMAGE_URL_ALLOW_NETWORKS"):
        monkeypatch.setenv(name, "10.0.0.0/8,intranet")
        with pytest.raises(ValidationError, match="CIDR"):
            Settings()
        monkeypatch.delenv(name)
