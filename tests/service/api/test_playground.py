"""GET / and /playground/*: the page's files, public with API keys on, with their types and a strict
Content-Security-Policy; nothing else on disk is reachable. (The page itself, in a browser:
tests/e2e/test_playground.py.)"""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.api.auth import digest
from service.api.routes.playground import STATIC


@pytest.fixture
def keyed(app_settings):
    with TestClient(create_app(app_settings.model_copy(update={"api_keys": {"alice": digest("k")}}))) as c:
        yield c


def test_the_page_and_its_files_are_public_with_keys_on(keyed):
    page = keyed.get("/")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    # Every module the page and its modules import is served, as JavaScript.
    modules = set(re.findall(r'src="/playground/([\w.]+\.js)"', page.text))
    for js in STATIC.glob("*.js"):
        modules |= set(re.findall(r'from "\./([\w.]+\.js)"', js.read_text()))
    assert {"app.js", "api.js", "form.js", "fields.js", "job.js", "chart.js", "train.js", "history.js", "edit.js",
            "mask.js"} <= modules
    for name in modules | {"style.css"}:
        r = keyed.get(f"/playground/{name}")
        assert r.status_code == 200, name
        assert r.headers["content-type"].startswith("text/css" if name.endswith(".css") else "text/javascript")
    assert keyed.get("/models").status_code == 401  # the API behind it still wants the key


@pytest.mark.parametrize("path", ["/playground/nope.js", "/playground/..%2Froutes%2Fplayground.py",
                                  "/playground/%2e%2e/app.py", "/playground/", "/index.html"])
def test_nothing_else_is_served(api, path):
    r = api.get(path)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_the_page_is_not_in_the_openapi_document(api):
    paths = api.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/playground") for p in paths)


def test_the_page_knows_input_images_by_their_type_as_get_models_shows_it(api):
    """The form offers a drop zone for every field of the ImageRef type, whatever its name: it knows them
    by the length limit GET /models gives them, which no other field has."""
    from service.api.requests import IMAGE_FIELDS
    from service.api.schemas import IMAGE_MAX_LENGTH

    form = (STATIC / "form.js").read_text()
    assert f"IMAGE_MAX_LENGTH = {IMAGE_MAX_LENGTH // 2**20} * 1024 * 1024" in form
    assert 'name === "image"' not in form
    tasks = api.get("/models").json()["tasks"]
    for task, info in tasks.items():
        shown = {name for name, spec in info["parameters"].items() if spec.get("maxLength") == IMAGE_MAX_LENGTH}
        assert shown == {path for path in IMAGE_FIELDS[task] if "." not in path}, task


def test_the_train_form_finds_its_task_by_route_and_what_it_reads_is_there(api):
    """The Train tab is built from the one task GET /models routes to POST /train: its models, methods,
    limits, and the parameters train.js lays out by name (the rest go under "More settings" as they come)."""
    train = (STATIC / "train.js").read_text()
    assert 'info.route === "/train"' in train
    tasks = api.get("/models").json()["tasks"]
    routed = [name for name, info in tasks.items() if info["route"] == "/train"]
    assert len(routed) == 1
    info = tasks[routed[0]]
    assert info["models"] and info["default_model"] in [m["name"] for m in info["models"]]
    assert all(f'"{method}"' in train for method in info["methods"])  # each has its label
    assert {"max_images", "max_image_bytes"} <= set(info["limits"])
    laid_out = {"steps", "rank", "learning_rate", "resolution", "trigger", "init_token", "seed", "replace",
                "validation"}
    assert laid_out <= set(info["parameters"])
    assert {"prompt", "every"} <= set(info["parameters"]["validation"]["default"])
    assert all("defaults" in m and "width" in m["defaults"] for m in info["models"])  # the resolution's default


def _js_object(source: str, name: str):
    """`export const NAME = {...};` (or [...]) in a playground module, read as JSON (quoted keys, no comments)."""
    match = re.search(rf"export const {name} = (.+?);(?: *//.*)?$", source, re.S | re.M)
    assert match, name
    return json.loads(re.sub(r",(\s*[}\]])", r"\1", match.group(1)))


def test_the_editing_sections_ranges_are_the_request_schemas(api):
    """GET /models shows `expand` and `hires` only as objects (`{"default": null}`): edit.js lays their parts
    out with the ranges of the request schemas, which it copies; they must agree."""
    from service.api.schemas import HIRES_UPSCALERS, Expand, Hires

    edit = (STATIC / "edit.js").read_text()
    tasks = api.get("/models").json()["tasks"]
    assert tasks["inpaint"]["parameters"]["expand"] == {"default": None}
    assert tasks["txt2img"]["parameters"]["hires"] == tasks["sdxl"]["parameters"]["hires"] == {"default": None}

    expand = _js_object(edit, "EXPAND")
    schema = Expand.model_json_schema()["properties"]
    assert expand["sides"] == list(Expand.model_fields)
    for side in expand["sides"]:
        assert {k: schema[side][k] for k in ("minimum", "maximum", "multipleOf")} == {
            k: expand[k] for k in ("minimum", "maximum", "multipleOf")}, side

    hires = _js_object(edit, "HIRES")
    assert _js_object(edit, "HIRES_PARTS") == list(Hires.model_fields)
    assert _js_object(edit, "HIRES_BUILTIN") == list(HIRES_UPSCALERS)
    schema = Hires.model_json_schema()["properties"]
    keys = ("default", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
    for part, spec in hires.items():
        want = dict(schema[part])
        for option in want.pop("anyOf", []):  # `steps`: an integer or null
            want.update(option)
        assert {k: v for k, v in spec.items() if k in keys} == {k: v for k, v in want.items() if k in keys}, part
    assert set(hires) == {name for name, s in schema.items() if "type" in s or "anyOf" in s} - {"upscaler"}
