"""/docs is Swagger UI served by Fresco itself: no other host named, its assets load, a CSP holds it to this
origin, and in a real browser (Debian's chromium, when installed) it renders the API's operations with no
request leaving the origin and no CSP violation."""

from __future__ import annotations

import re

from service.api.app import create_app
from tests.e2e.test_playground import browser  # noqa: F401  (the fixture: chromium, or a skip saying why)
from tests.service.api.live_app import serving


def test_docs_name_no_other_host_and_send_a_csp(api):
    r = api.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-eval" not in csp
    assert not re.search(r"(?:src|href)=\"(?:https?:)?//", r.text), r.text  # every asset on this origin
    assert "<script>" not in r.text  # no inline script: the CSP allows none
    for url in re.findall(r"(?:src|href)=\"([^\"]+)\"", r.text):
        asset = api.get(url)
        assert asset.status_code == 200 and len(asset.content) > 100, url
    assert "SwaggerUIBundle" in api.get("/docs/assets/swagger-ui-bundle.js").text
    assert api.get("/docs/assets/..%2Fcore.py").status_code == 404
    assert api.get("/docs/assets/redoc.standalone.js").status_code == 404
    assert api.get("/redoc").status_code == 404
    assert "/docs" not in api.get("/openapi.json").json()["paths"]


def test_docs_render_in_a_browser_within_the_csp(app_settings, browser):  # noqa: F811
    with serving(create_app(app_settings)) as port:
        origin = f"http://127.0.0.1:{port}"
        page = browser.new_page()
        requests, problems = [], []
        page.on("request", lambda request: requests.append(request.url))
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(origin + "/docs")
        page.wait_for_selector("text=/generate", timeout=15000)  # the operations, from /openapi.json
        assert page.locator(".opblock").count() > 10
        page.close()
    assert all(url.startswith(origin) or url.startswith(("data:", "blob:")) for url in requests), requests
    assert not problems, problems
