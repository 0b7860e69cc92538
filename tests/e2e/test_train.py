"""Training through HTTP, Redis, a real worker process and storage (the e2e keyed stack: tiny SD and SDXL
models, API keys on): a LoRA trained from a zip, watched, then used at once by its key (and by no other);
its file loads into a plain diffusers pipeline outside Fresco; an embedding used by its token; a
canceled training job registers nothing and leaves no checkpoint."""

from __future__ import annotations

import base64
import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.conftest import wait_status
from tests.e2e.conftest import KEYS

DONE = {"succeeded", "failed", "canceled"}
SMALL = {"resolution": 256, "rank": 4, "learning_rate": 1e-3, "checkpoint_every": 4,
         "validation": {"every": 4, "prompt": "a red square"}}


def square(color, size=96) -> bytes:
    img = Image.new("RGB", (size, size), (240, 240, 240))
    ImageDraw.Draw(img).rectangle((20, 20, 76, 76), fill=color)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def dataset() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i, color in enumerate([(220, 20, 20), (200, 40, 30), (230, 10, 60)]):
            z.writestr(f"red/{i}.png", square(color))
            z.writestr(f"red/{i}.txt", "a red square")
    return buf.getvalue()


@pytest.fixture(scope="module")
def alice(keyed_stack):
    with keyed_stack.client(KEYS["alice"]) as c:
        yield c


@pytest.fixture(scope="module")
def bob(keyed_stack):
    with keyed_stack.client(KEYS["bob"]) as c:
        yield c


def train(client, files=None, timeout=120, **fields) -> dict:
    if files is not None:
        form = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in fields.items()}
        r = client.post("/train", data=form, files={"dataset": ("set.zip", files, "application/zip")})
    else:
        r = client.post("/train", json=fields)
    assert r.status_code == 202, r.text
    return r.json()


@pytest.fixture(scope="module")
def lora(alice, keyed_stack):
    """A LoRA alice trained on tiny-sd from a zip: the finished job."""
    job = train(alice, dataset(), model="tiny-sd", name="red-square", steps=8, seed=3, **SMALL)
    job = wait_status(alice, job["id"], DONE, 180)
    assert job["status"] == "succeeded", job
    return job


def test_a_lora_is_trained_with_progress_and_validation_images(lora, alice, keyed_stack):
    assert lora["progress"]["stage"] == "done" and lora["progress"]["loss"] > 0
    adapter = lora["result"]["adapter"]
    assert (adapter["name"], adapter["kind"], adapter["model"], adapter["family"], adapter["trigger"]) == \
        ("red-square", "lora", "tiny-sd", "sd", "red-square")
    assert adapter["digest"].startswith("sha256:") and adapter["size_bytes"] > 0
    assert len(lora["result"]["images"]) == 1 and lora["result"]["images"][0]["width"] == 256
    # The checkpoint is gone; the adapter's file is downloadable by its owner's signed URL.
    assert not (keyed_stack.data_dir / "results" / lora["id"] / "checkpoint.pt").exists()
    r = alice.get(adapter["url"])
    assert r.status_code == 200 and len(r.content) == adapter["size_bytes"]
    listed = alice.get("/adapters").json()["adapters"]
    assert [a["name"] for a in listed] == ["red-square"] and listed[0]["digest"] == adapter["digest"]


def test_the_file_loads_into_a_plain_diffusers_pipeline(lora, alice, tmp_path):
    """What AUTOMATIC1111, ComfyUI and diffusers users do with the downloaded file: kohya keys, loaded as is
    (that it then changes the images is tests/workers/training/test_lora.py's)."""
    import safetensors.torch

    from workers.families.sd import tiny_sd

    data = alice.get(lora["result"]["adapter"]["url"]).content
    (tmp_path / "red-square.safetensors").write_bytes(data)
    meta = safetensors.safe_open(str(tmp_path / "red-square.safetensors"), "pt").metadata()
    assert meta["ss_network_dim"] == "4" and meta["ss_output_name"] == "red-square"
    state = safetensors.torch.load(data)
    assert all(k.startswith("lora_unet_") for k in state)
    pipe = tiny_sd()
    pipe.load_lora_weights(str(tmp_path), weight_name="red-square.safetensors", adapter_name="red")
    layers = sum(1 for k in state if k.endswith(".lora_down.weight"))
    assert "red" in pipe.unet.peft_config and layers == sum(
        1 for name, m in pipe.unet.named_modules() if name.endswith("lora_A.red"))


def test_the_lora_is_usable_at_once_by_its_key_and_by_no_other(lora, alice, bob):
    body = {"task": "txt2img", "model": "tiny-sd", "prompt": "a red square", "width": 256, "height": 256,
            "steps": 2, "seed": 5}
    plain = _run(alice, body)
    styled = _run(alice, {**body, "loras": [{"name": "red-square"}]})
    assert styled["params"]["loras"][0]["digest"] == lora["result"]["adapter"]["digest"]
    assert (_pixels(alice, plain) != _pixels(alice, styled)).any()
    r = bob.post("/generate", json={**body, "loras": [{"name": "red-square"}]})
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["field"] == "loras[0].name"
    assert bob.get("/adapters").json()["adapters"] == []
    assert bob.delete("/adapters/red-square").status_code == 404


def test_automatic1111_clients_name_it_in_a_prompt_tag(lora, alice, bob):
    body = {"prompt": "a red square <lora:red-square:0.7>", "steps": 2, "width": 256, "height": 256, "seed": 5,
            "override_settings": {"sd_model_checkpoint": "tiny-sd"}}
    r = alice.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert not [w for w in info["warnings"] if "red-square" in w], info["warnings"]  # not skipped: it ran
    assert "red-square" in [item["name"] for item in alice.get("/sdapi/v1/loras").json()]
    assert "red-square" not in [item["name"] for item in bob.get("/sdapi/v1/loras").json()]


def test_a_token_the_tokenizer_splits_fails_the_job_saying_so(alice):
    job = train(alice, model="tiny-sd", name="badtoken", method="embedding", init_token="twox",
                steps=2, resolution=256, images=[{"image": "data:image/png;base64," +
                                                   base64.b64encode(square((0, 0, 250))).decode()}])
    job = wait_status(alice, job["id"], DONE, 60)
    assert job["status"] == "failed" and job["error"]["code"] == "invalid_input"
    assert "init_token" in job["error"]["message"]


def test_an_embedding_is_used_by_its_token(alice, bob):
    job = train(alice, model="tiny-sd", name="red-token", method="embedding", init_token="x", steps=4, seed=1,
                images=[{"image": "data:image/png;base64," + base64.b64encode(square((250, 0, 0))).decode(),
                         "caption": "a square"}], resolution=256, checkpoint_every=0)
    job = wait_status(alice, job["id"], DONE, 120)
    assert job["status"] == "succeeded", job
    token = job["result"]["adapter"]["token"]
    assert token == "<red-token>" and job["result"]["adapter"]["kind"] == "embedding"
    body = {"task": "txt2img", "model": "tiny-sd", "width": 256, "height": 256, "steps": 2, "seed": 5}
    mine = _run(alice, {**body, "prompt": f"a {token} on grass"})
    assert [e["name"] for e in mine["params"]["embeddings"]] == ["red-token"]
    theirs = _run(bob, {**body, "prompt": f"a {token} on grass"})  # bob's prompt: just text
    assert "embeddings" not in theirs["params"]
    assert (_pixels(alice, mine) != _pixels(bob, theirs)).any()
    assert alice.delete("/adapters/red-token").status_code == 204


def test_a_canceled_training_job_registers_nothing_and_leaves_no_checkpoint(alice, keyed_stack):
    job = train(alice, dataset(), model="tiny-sd", name="never", steps=2000, seed=2, resolution=256, rank=4,
                checkpoint_every=1)
    running = wait_status(alice, job["id"], {"running"}, 60)
    while running["progress"]["step"] < 3:
        running = alice.get(f"/jobs/{job['id']}").json()
    assert alice.delete(f"/jobs/{job['id']}").status_code in (200, 202)
    ended = wait_status(alice, job["id"], DONE, 60)
    assert ended["status"] == "canceled" and ended["result"] is None
    assert "never" not in [a["name"] for a in alice.get("/adapters").json()["adapters"]]
    assert not (keyed_stack.data_dir / "results" / job["id"] / "checkpoint.pt").exists()


def _run(client, body) -> dict:
    r = client.post("/generate", json=body)
    assert r.status_code == 202, r.text
    job = wait_status(client, r.json()["id"], DONE, 60)
    assert job["status"] == "succeeded", job
    return job


def _pixels(client, job) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(client.get(job["result"]["images"][0]["url"]).content)), dtype=np.int16)
