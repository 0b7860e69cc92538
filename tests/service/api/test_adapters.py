"""`loras` in requests and adapters in `GET /models`: each bad entry a 422 naming `loras[i]...`, the
resolved params carry the scales, and a models file's `adapters:` section is checked when it loads."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

import redis

from service.catalog import AdapterSpec, Catalog, load_catalog, tiny_catalog
from service.jobs import keys, protocol
from service.jobs.view import to_view
from service.families import KINDS
from tests.service.api.test_validation import SECRET, assert_rejected, post


def turbo(**fields):
    return {"task": "turbo", "prompt": "a cat", **fields}


@pytest.mark.parametrize("loras, field", [
    ([{"name": SECRET}], "loras[0].name"),
    ([{"name": "tiny-cat"}], "loras[0].name"),  # an embedding: its token goes in the prompt
    ([{"name": "tiny-style", "scale": 2.5}], "loras[0].scale"),
    ([{"name": "tiny-style", "scale": -2.01}], "loras[0].scale"),
    ([{"name": "tiny-style", "scale": "1"}], "loras[0].scale"),
    ([{"name": "tiny-style", "scale": float("nan")}], "loras[0].scale"),
    ([{"scale": 1.0}], "loras[0]"),
    ([{"name": "tiny-style", "url": "https://example.com/x.safetensors"}], "loras[0]"),
    ([{"name": "tiny-style", "weight": 1}], "loras[0].weight"),
    ([{"name": "tiny-style"}, {"name": "tiny-style", "scale": 0.5}], "loras[1]"),
    ([{"name": "tiny-style"}] * 6, "loras"),
    ([{"url": "https://example.com/style.safetensors"}], "loras[0].url"),  # URLs are off by default
    ("tiny-style", "loras"),
])
def test_bad_loras_rejected(api, loras, field):
    assert_rejected(post(api, json.dumps(turbo(loras=loras))), field)


def test_lora_that_does_not_fit_the_model(app_settings):
    catalog = tiny_catalog()
    catalog.adapters["svd-only"] = AdapterSpec(name="svd-only", kind="lora", source="tiny", base=["tiny-svd"])
    catalog.adapters["turbo-only"] = AdapterSpec(name="turbo-only", kind="lora", source="tiny", base=["turbo"])
    from service.api.app import create_app

    with TestClient(create_app(app_settings, catalog=catalog)) as api:
        assert_rejected(post(api, turbo(loras=[{"name": "svd-only"}])), "loras[0].name")
        r = post(api, {"task": "sdxl", "prompt": "x", "loras": [{"name": "turbo-only"}]})
        assert_rejected(r, "loras[0].name")
        assert "tiny-turbo" not in r.text  # sdxl's list of models it fits: none
        assert post(api, turbo(loras=[{"name": "turbo-only"}])).status_code == 202


def test_loras_resolved_with_default_scales(api):
    r = post(api, turbo(loras=[{"name": "tiny-style"}, {"name": "tiny-sketch"}]))
    assert r.status_code == 202, r.text
    assert r.json()["params"]["loras"] == [{"name": "tiny-style", "scale": 1.0}, {"name": "tiny-sketch", "scale": 0.8}]
    r = post(api, {"task": "img2img", "prompt": "x", "image": _image(), "loras": [{"name": "tiny-style", "scale": 0}]})
    assert r.json()["params"]["loras"] == [{"name": "tiny-style", "scale": 0.0}]
    assert post(api, turbo()).json()["params"]["loras"] == []


def _image():
    from tests.conftest import png_data_url

    return png_data_url(64, 64)


def test_models_lists_adapters_per_model(api):
    tasks = api.get("/models").json()["tasks"]
    for task in ("sdxl", "turbo", "img2img", "txt2img"):
        assert tasks[task]["limits"]["max_loras"] == 5
        assert tasks[task]["limits"]["adapter_urls"] is False
        assert "loras" in tasks[task]["parameters"]
        for model in tasks[task]["models"]:
            by_name = {a["name"]: a for a in model["adapters"]}
            family = KINDS[model["kind"]].family
            if family != "sdxl":  # the tiny profile's SDXL adapters fit none of the others
                assert not {"tiny-style", "tiny-sketch", "tiny-cat"} & set(by_name)
                if family in ("sd3", "flux"):  # LoRAs only: no textual-inversion format exists for them
                    assert all(a["kind"] == "lora" for a in by_name.values())
                continue
            assert by_name["tiny-style"] == {"name": "tiny-style", "kind": "lora", "triggers": ["tiny style"],
                                             "scale": {"default": 1.0, "minimum": -2.0, "maximum": 2.0},
                                             "description": by_name["tiny-style"]["description"]}
            assert by_name["tiny-sketch"]["scale"]["default"] == 0.8
            assert by_name["tiny-cat"]["kind"] == "embedding" and by_name["tiny-cat"]["tokens"] == ["<tiny-cat>"]
    assert "adapters" not in tasks["svd"]["models"][0]
    assert "max_loras" not in tasks["svd"]["limits"]


def test_url_adapters_when_allowed(app_settings):
    from service.api.app import create_app

    settings = app_settings.model_copy(update={"allow_adapter_urls": True})
    with TestClient(create_app(settings)) as api:
        assert api.get("/models").json()["tasks"]["turbo"]["limits"]["adapter_urls"] is True
        url = "https://example.com/loras/style.safetensors?sig=1"
        r = post(api, turbo(loras=[{"url": url, "scale": 0.5}]))
        assert r.status_code == 202, r.text
        # the query (a token) is shown nowhere: the JobView and the webhook bodies rendered from the record
        assert r.json()["params"]["loras"] == [{"url": url.split("?")[0], "scale": 0.5}]
        record = protocol.decode_hash(redis.Redis.from_url(settings.redis_url).hgetall(keys.job(r.json()["id"])))
        assert "sig=1" not in record["params"] and json.loads(record["adapter_urls"]) == {"0": url}  # for the worker
        assert "sig=1" not in json.dumps(to_view(record, "http://testserver"))
        for bad in ("https://example.com/" + SECRET + ".ckpt", "https://example.com/a.BIN",
                    "https://example.com/a.pt?x=1", "http://example.com/a.safetensors",
                    "https://user:" + SECRET + "@example.com/a.safetensors", "ftp://example.com/a.safetensors",
                    "https://[::1", "https://[" + SECRET, "https://example.com:99999/a.safetensors",
                    "https://169.254.169.254/a.safetensors"):
            assert_rejected(post(api, turbo(loras=[{"url": bad}])), "loras[0].url")  # a 422, never a 500


def write(tmp_path, text):
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return path


MODELS = "models:\n  base: {kind: sdxl, source: ./base}\n  vid: {kind: svd, source: ./vid}\n"


def test_models_file_adapters(tmp_path):
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "a.safetensors").write_bytes(b"")
    catalog = load_catalog(write(tmp_path, MODELS + (
        "adapters:\n"
        "  a: {kind: lora, source: loras/a.safetensors, base: sdxl, trigger: ink}\n"
        "  b: {kind: lora, source: someone/repo, weight_name: b.safetensors, base: [base], default_scale: 0.5}\n"
        "  e: {kind: embedding, source: someone/emb, base: sdxl, token: [<e>]}\n")))
    assert catalog.adapters["a"].source == str((tmp_path / "loras" / "a.safetensors").resolve())
    assert catalog.adapters["a"].trigger == ["ink"]
    assert [a.name for a in catalog.adapters_for("base")] == ["a", "b", "e"]
    assert catalog.adapters_for("vid") == []
    assert [a.name for a in catalog.adapters_for("base", "embedding")] == ["e"]


@pytest.mark.parametrize("entry, words", [
    ("{kind: lora, source: x/y, base: sdxl, token: <t>}", "token"),
    ("{kind: embedding, source: x/y, base: sdxl}", "token"),
    ("{kind: lora, source: x/y, base: sd4}", "base"),
    ("{kind: embedding, source: x/y, base: flux, token: <t>}", "no textual-inversion"),
    ("{kind: lora, source: x/y}", "base"),
    ("{kind: lora, source: /m/style.ckpt, base: sdxl}", "pickle"),
    ("{kind: lora, source: x/y, weight_name: style.bin, base: sdxl}", "pickle"),
    ("{kind: lora, source: x/y, base: sdxl, default_scale: 3}", "default_scale"),
    ("{kind: hypernetwork, source: x/y, base: sdxl}", "kind"),
])
def test_models_file_adapter_errors(tmp_path, entry, words):
    with pytest.raises(ValueError, match=words):
        load_catalog(write(tmp_path, MODELS + f"adapters:\n  bad: {entry}\n"))


def test_embedding_tokens_are_unique():
    with pytest.raises(ValueError, match="token"):
        Catalog.model_validate({"models": {"m": {"kind": "sdxl", "source": "tiny"}}, "adapters": {
            "a": {"kind": "embedding", "source": "tiny", "base": "sdxl", "token": "<t>"},
            "b": {"kind": "embedding", "source": "tiny", "base": "sdxl", "token": ["<u>", "<t>"]}}})
