"""POST /train, GET /adapters, DELETE /adapters/{name}, and the adapters a key trained in requests and in
GET /models: each bad request a clear 4xx naming what is wrong, and nothing written for it. The API runs
in-process on a Redis of this module's own (no worker: nothing here trains; tests/e2e/test_train.py does)."""

from __future__ import annotations

import base64
import io
import json
import zipfile

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service import adapter_registry
from service.api.auth import digest
from service.jobs import keys
from tests.conftest import png_data_url
from tests.service.api.test_validation import SECRET, assert_rejected

IMG = png_data_url(64, 64)
KEYS = {"alice": "alice-key-" + "a" * 20, "bob": "bob-key-" + "b" * 20}


def _app(module_server, tmp_path, **settings):
    from service.api.app import create_app
    from service.settings import Settings

    s = Settings(redis_url=module_server.url, data_dir=tmp_path, max_image_bytes=256 * 1024,
                 max_train_bytes=400 * 1024, max_adapters_per_key=2, **settings)
    return TestClient(create_app(s))


@pytest.fixture
def api(module_server, module_redis, tmp_path):
    with _app(module_server, tmp_path) as c:
        yield c


@pytest.fixture
def keyed(module_server, module_redis, tmp_path):
    with _app(module_server, tmp_path, api_keys={n: digest(k) for n, k in KEYS.items()}) as c:
        yield c


def as_(who: str) -> dict:
    return {"Authorization": f"Bearer {KEYS[who]}"}


def body(**fields) -> dict:
    return {"model": "tiny-sd", "name": "my-cat", "images": [{"image": IMG, "caption": "a cat"}], **fields}


def png(size=(64, 48), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def zipped(files: dict[str, bytes], **kw) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", **kw) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def post_zip(api, data: bytes, headers=None, **fields):
    form = {"model": "tiny-sd", "name": "my-cat", **{k: str(v) for k, v in fields.items()}}
    return api.post("/train", data=form, files={"dataset": ("set.zip", data, "application/zip")}, headers=headers)


def register(redis, owner, name, kind="lora", family="sd", token=None):
    """A record as a finished training job leaves it (the worker's side is tests/e2e/test_train.py's)."""
    d = "sha256:" + (name.encode().hex() * 64)[:64]
    record = {"name": name, "kind": kind, "model": "tiny-sd", "family": family, "trigger": name, "digest": d,
              "size_bytes": 10, "digests": [d], "steps": 5}
    if token:
        record.update(token=token, embedding_digest=d)
    redis.hset(keys.adapters(owner), name, json.dumps(record))
    return record


def test_a_training_job_is_a_job_with_the_models_defaults(api):
    r = api.post("/train", json=body(images=[IMG, {"image": IMG}]))  # bare image inputs too
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["task"] == "train" and job["status"] == "queued" and r.headers["location"] == f"/jobs/{job['id']}"
    p = job["params"]
    assert (p["resolution"], p["learning_rate"], p["alpha"], p["trigger"], p["method"]) == (512, 1e-4, 16.0,
                                                                                            "my-cat", "lora")
    assert p["validation"] == {"prompt": "my-cat", "every": 0, "num_images": 1}
    assert [i["caption"] for i in p["images"]] == ["", ""]
    assert p["images"][0]["image"]["url"].endswith(f"/results/{job['id']}/images-0.png")
    assert api.get(p["images"][1]["image"]["url"]).status_code == 200  # the dataset is stored with the job
    assert job["progress"]["stage"] == "queued" and "train" in api.get("/models").json()["tasks"]


def test_an_embedding_gets_a_token_from_its_name_and_a_higher_rate(api):
    job = api.post("/train", json=body(method="embedding", init_token="猫")).json()
    p = job["params"]
    assert (p["token"], p["trigger"], p["learning_rate"], p["init_token"]) == ("<my-cat>", "<my-cat>", 5e-4, "猫")
    assert p["validation"]["prompt"] == "<my-cat>, a cat"


@pytest.mark.parametrize("fields, field", [
    ({"images": []}, "images"),
    ({"images": [IMG] * 201}, "images"),
    ({"images": ["not an image " + SECRET]}, "images[0].image"),
    ({"images": [{"image": IMG, "caption": "x", "extra": 1}]}, "images[0].extra"),
    ({"name": "My Cat"}, "name"),
    ({"name": "-cat"}, "name"),
    ({"name": "tiny-style"}, "name"),  # the server's own adapter: not to be shadowed
    ({"model": "tiny-turbo"}, "model"),  # no training on Turbo
    ({"model": SECRET}, "model"),
    ({"method": "dreambooth"}, "method"),
    ({"steps": 0}, "steps"),
    ({"steps": 20001}, "steps"),
    ({"rank": 129}, "rank"),
    ({"resolution": 300}, "resolution"),
    ({"learning_rate": 0}, "learning_rate"),
    ({"caption_dropout": 1.5}, "caption_dropout"),
    ({"init_token": "猫"}, "init_token"),  # a LoRA has no token to start from a word
    ({"trigger": "two words"}, "trigger"),
    ({"method": "embedding", "trigger": "<tiny-cat>"}, "trigger"),  # a server embedding's token
    ({"method": "embedding", "trigger": "kitten"}, "trigger"),  # a token in angle brackets only
    ({"validation": {"every": -1}}, "validation.every"),
    ({"retries": 3}, "retries"),
    ({"task": "sdxl"}, "task"),
])
def test_bad_training_requests_are_422s_naming_the_field(api, module_redis, fields, field):
    assert_rejected(api.post("/train", json=body(**fields)), field)
    assert module_redis.keys("fresco:job:*") == []  # nothing written


def test_a_dataset_over_the_byte_limit_is_refused(api):
    image = "data:image/png;base64," + base64.b64encode(_noise_png(200)).decode()  # 120 KB each, 400 KB allowed
    assert_rejected(api.post("/train", json=body(images=[image] * 4)), "images")


def test_the_generate_route_takes_no_training_job(api):
    assert_rejected(api.post("/generate", json={"task": "train", **body()}), "task")


def test_a_zip_dataset_with_captions(api):
    data = zipped({"set/b.png": png(), "set/b.txt": "a dog\n".encode(), "set/a.jpg": _jpeg(),
                   "__MACOSX/set/._a.jpg": b"junk", "set/.DS_Store": b"junk"})
    r = post_zip(api, data, steps=20, buckets="false", validation='{"every": 10}')
    assert r.status_code == 202, r.text
    p = r.json()["params"]
    assert [i["caption"] for i in p["images"]] == ["", "a dog"]  # in name order: a.jpg, b.png
    assert (p["steps"], p["buckets"], p["validation"]["every"]) == (20, False, 10)


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (0, 90, 0)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("files, named", [
    ({"../evil.png": png()}, "../evil.png"),
    ({"/abs.png": png()}, "/abs.png"),
    ({"a.png": png(), "notes.pdf": b"%PDF"}, "notes.pdf"),
    ({"a.gif": b"GIF89a"}, "a.gif"),
    ({"a.png": b"\x89PNG not really"}, "a.png"),
    ({"a.png": png((600, 600))}, "a.png"),  # over max_pixels? no: over max_image_bytes once noisy
    ({"a.png": png(), "a.txt": b"\xff\xfe\xfa"}, "a.txt"),
    ({"a.png": png(), "b.txt": b"orphan"}, "b.txt"),
    ({"a.png": png(), "a.jpg": _jpeg()}, "a.jpg"),
])
def test_a_bad_zip_entry_is_named(api, module_redis, files, named):
    if named == "a.png" and "a.png" in files and len(files["a.png"]) > 1000:
        files = {"a.png": _noise_png(400)}  # 480 KB of noise: over the 256 KiB image limit
    r = post_zip(api, zipped(files))
    assert_rejected(r, "dataset")
    assert named in r.json()["error"]["fields"][0]["message"]
    assert module_redis.keys("fresco:job:*") == []


def _noise_png(side: int) -> bytes:
    import random

    rnd = random.Random(0)
    img = Image.frombytes("RGB", (side, side), bytes(rnd.getrandbits(8) for _ in range(side * side * 3)))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_a_zip_bomb_is_refused_without_unpacking_it(api):
    bomb = zipped({f"{i}.png": b"\0" * (20 * 1024 * 1024) for i in range(3)}, compression=zipfile.ZIP_DEFLATED)
    assert len(bomb) < 200 * 1024
    r = post_zip(api, bomb)
    assert_rejected(r, "dataset")
    assert "0.png" in r.json()["error"]["fields"][0]["message"]


def test_not_a_zip_and_no_dataset(api):
    assert_rejected(post_zip(api, b"PK not a zip"), "dataset")
    r = api.post("/train", data={"model": "tiny-sd", "name": "x"}, files={"other": ("a", b"1")})
    assert r.status_code == 422
    assert api.post("/train", content=b"x", headers={"content-type": "text/plain"}).status_code == 415


def test_a_taken_name_is_a_409_unless_replaced_and_the_key_has_a_limit(api, module_redis):
    register(module_redis, None, "my-cat")
    r = api.post("/train", json=body())
    assert r.status_code == 409 and "replace" in r.json()["error"]["message"]
    assert api.post("/train", json=body(replace=True)).status_code == 202
    register(module_redis, None, "other")
    r = api.post("/train", json=body(name="third"))  # the limit is 2 here
    assert r.status_code == 409 and "FRESCO_MAX_ADAPTERS_PER_KEY" in r.json()["error"]["message"]


def test_adapters_are_listed_used_and_deleted_per_key(keyed, module_redis, tmp_path):
    register(module_redis, "alice", "alices-style")
    register(module_redis, "alice", "alices-cat", kind="embedding", token="<alices-cat>")
    listed = keyed.get("/adapters", headers=as_("alice")).json()
    assert [a["name"] for a in listed["adapters"]] == ["alices-cat", "alices-style"]
    assert all(a["owner"] == "you" and "/results/adapters/" in a["url"] for a in listed["adapters"])
    assert keyed.get("/adapters", headers=as_("bob")).json()["adapters"] == []
    # GET /models: under the SD models of the tasks that take adapters, for its owner only
    models = keyed.get("/models", headers=as_("alice")).json()["tasks"]["txt2img"]["models"]
    sd = next(m for m in models if m["name"] == "tiny-sd")
    mine = {a["name"]: a for a in sd["adapters"] if a.get("owner") == "you"}
    assert set(mine) == {"alices-style", "alices-cat"} and mine["alices-cat"]["tokens"] == ["<alices-cat>"]
    sdxl = next(m for m in models if m["name"] == "tiny-sdxl")
    assert not [a for a in sdxl["adapters"] if a.get("owner")]  # trained on SD: does not fit SDXL
    bob_models = keyed.get("/models", headers=as_("bob")).json()["tasks"]["txt2img"]["models"]
    assert not [a for m in bob_models for a in m["adapters"] if a.get("owner")]
    # in a request: by name in `loras`, by token in the prompt; another key knows neither
    req = {"task": "txt2img", "model": "tiny-sd", "prompt": "<alices-cat> on a mat",
           "loras": [{"name": "alices-style"}]}
    job = keyed.post("/generate", json=req, headers=as_("alice")).json()
    assert job["params"]["loras"] == [{"name": "alices-style", "scale": 1.0, "owned": True,
                                       "digest": register(module_redis, "alice", "alices-style")["digest"]}]
    assert [e["name"] for e in job["params"]["embeddings"]] == ["alices-cat"]
    assert_rejected(keyed.post("/generate", json=req, headers=as_("bob")), "loras[0].name")
    bob_job = keyed.post("/generate", json={**req, "loras": []}, headers=as_("bob")).json()
    assert "embeddings" not in bob_job["params"]
    assert_rejected(keyed.post("/generate", json={**req, "model": "tiny-sdxl"}, headers=as_("alice")),
                    "loras[0].name")  # an SD LoRA on an SDXL model
    # DELETE: the owner's only
    assert keyed.delete("/adapters/alices-style", headers=as_("bob")).status_code == 404
    assert keyed.delete("/adapters/alices-style", headers=as_("alice")).status_code == 204
    assert keyed.delete("/adapters/alices-style", headers=as_("alice")).status_code == 404
    assert keyed.get("/adapters").status_code == 401


def test_registration_checks_the_job_and_counts_references(module_redis):
    """The worker's atomic step: only for a running job nobody canceled, a free name, under the limit;
    a file's digest counted per record, so deleting one record of two keeps the file."""
    module_redis.hset(keys.job("j1"), mapping={"status": "running"})
    rec = {"name": "a", "digests": ["sha256:" + "1" * 64], "digest": "sha256:" + "1" * 64}
    assert adapter_registry.register(module_redis, "k", "j1", rec, replace=False, limit=5).ok
    again = adapter_registry.register(module_redis, "k", "j1", rec, replace=False, limit=5)
    assert (again.ok, again.why) == (False, "taken")
    assert adapter_registry.register(module_redis, "k", "j1", {**rec, "name": "b"}, replace=False, limit=5).ok
    assert adapter_registry.register(module_redis, "k", "j1", {**rec, "name": "c"}, replace=False, limit=2).why == \
        "limit"
    module_redis.hset(keys.job("j1"), "cancel", "1")
    assert adapter_registry.register(module_redis, "k", "j1", {**rec, "name": "d"}, replace=False, limit=5).why == \
        "ended"
    assert adapter_registry.unregister(module_redis, "k", "a")[1] == []  # "b" still names the file
    assert adapter_registry.unregister(module_redis, "k", "b")[1] == rec["digests"]
    assert adapter_registry.unregister(module_redis, "k", "b") is None
