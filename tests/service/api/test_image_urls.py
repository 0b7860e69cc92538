"""Image URLs: off by default; when on, public addresses only, checked on every redirect and on the
address actually connected to, with size and time caps. Every server here listens on 127.0.0.2
(loopback), which the test allows explicitly; nothing is ever sent off this machine."""

from __future__ import annotations

import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.api.app import create_app
from service.fetch import is_public
from tests.local_server import local_server

PNG = io.BytesIO()
Image.new("RGB", (96, 64), (10, 200, 30)).save(PNG, "PNG")
PNG = PNG.getvalue()


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.0.0.2", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "fe80::1", "fd00:ec2::254", "fc00::1", "::",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "2002:7f00:1::", "64:ff9b::a00:1", "198.18.0.1",
])
def test_non_public_addresses_refused(address):
    assert not is_public(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "151.101.1.69"])
def test_public_addresses_allowed(address):  # checked as values only: nothing connects to them
    assert is_public(address)


@pytest.fixture(scope="module")
def server():
    with local_server() as srv:
        srv.serve("/ok.png", PNG, "image/png")
        srv.serve("/big.png", b"\x89PNG" + b"\0" * 300_000, "image/png")
        srv.redirect("/to-loopback", f"http://127.0.0.1:{srv.port}/ok.png")
        srv.redirect("/to-localhost", f"http://localhost:{srv.port}/ok.png")
        srv.redirect("/to-ok", f"{srv.base}/ok.png")
        srv.redirect("/loop", "/loop")
        srv.slow("/slow", 5)
        srv.redirect("/to-file", "file:///etc/passwd")
        yield srv.base


@pytest.fixture
def fetching(app_settings):
    settings = app_settings.model_copy(update={
        "allow_image_urls": True, "image_url_schemes": ["http", "https"],
        "image_url_allow_networks": ["127.0.0.2/32"], "image_url_timeout_s": 2.0, "max_image_bytes": 200_000})
    with TestClient(create_app(settings)) as c:
        yield c


def post(client, url):
    return client.post("/generate", json={"task": "img2img", "prompt": "x", "image": url})


def image_error(r):
    assert r.status_code == 422, r.text
    return [f["message"] for f in r.json()["error"]["fields"] if f["field"] == "image"][0]


def test_urls_are_off_by_default(api, server):
    assert "disabled" in image_error(post(api, f"{server}/ok.png"))


def test_allowed_address_fetched_and_sized(fetching, server):
    r = post(fetching, f"{server}/ok.png")
    assert r.status_code == 202, r.text
    assert (r.json()["params"]["width"], r.json()["params"]["height"]) == (96, 64)
    r = post(fetching, f"{server}/to-ok")  # a redirect to an allowed address is followed
    assert r.status_code == 202


@pytest.mark.parametrize("path,words", [
    ("/to-loopback", "public"), ("/to-localhost", "public"), ("/big.png", "larger"), ("/loop", "redirected"),
    ("/slow", "longer"), ("/to-file", "scheme"), ("/missing.png", "HTTP 404"),
])
def test_refused(fetching, server, path, words):
    assert words in image_error(post(fetching, server + path))


def test_loopback_and_schemes_refused_directly(fetching, server):
    port = server.rsplit(":", 1)[1]
    for url in (f"http://127.0.0.1:{port}/ok.png", f"http://localhost:{port}/ok.png", f"http://[::1]:{port}/ok.png",
                f"ftp://127.0.0.2:{port}/ok.png", f"http://user:pw@127.0.0.2:{port}/ok.png"):
        image_error(post(fetching, url))
    assert "scheme" in image_error(post(fetching, "file:///etc/passwd"))
