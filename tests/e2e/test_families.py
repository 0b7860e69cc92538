"""The model families and ControlNet through HTTP, Redis, a real worker process and storage: txt2img on an
SD 1.x-family model, a Chinese prompt on the PAI-style model, a canny ControlNet job; then a stack whose
models file names a single-file checkpoint, a pickled PAI-style directory (trusted) and a ControlNet
directory, with a worker that loads only the models FRESCO_WORKER_MODELS names."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.conftest import Stack
from tests.e2e.test_tasks import run
from tests.workers import model_dirs


def pixels(client, job, index=0) -> np.ndarray:
    r = client.get(job["result"]["images"][index]["url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(r.content)), dtype=np.int16)


def png_url(img: Image.Image) -> str:
    import base64

    out = io.BytesIO()
    img.save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


EDGES = png_url(Image.effect_mandelbrot((192, 128), (-2, -1.2, 1, 1.2), 60).convert("RGB"))


@pytest.mark.parametrize("model, size, defaults", [
    (None, 512, {"guidance_scale": 7.5, "scheduler": "euler"}),  # the default: tiny-sd, at its native size
    ("tiny-sd3", 256, {"guidance_scale": 3.5, "scheduler": "flow_euler", "max_sequence_length": 256}),
    ("tiny-flux", 256, {"guidance_scale": 3.5, "scheduler": "flow_euler", "max_sequence_length": 512}),
    ("tiny-flux-schnell", 256, {"guidance_scale": 0.0, "scheduler": "flow_euler", "max_sequence_length": 256}),
])
def test_txt2img_on_each_family_with_its_defaults(client, model, size, defaults):
    """SD 3.5 and FLUX.1 at 256² (their native 1024² is slow on the CPU); guidance, scheduler and T5 tokens
    are the model's own."""
    body = {"task": "txt2img", "prompt": "a lighthouse", "steps": 3, "seed": 4}
    job = run(client, {**body, "model": model, "width": size, "height": size} if model else body)
    assert job["model"] == (model or "tiny-sd") and job["progress"]["stage"] == "done"
    p = job["params"]
    assert (p["width"], p["height"]) == (size, size) and {k: p[k] for k in defaults} == defaults
    assert pixels(client, job).shape == (size, size, 3)


def test_a_chinese_prompt_on_the_pai_style_model(client):
    body = {"task": "txt2img", "model": "tiny-pai", "prompt": "一只猫在草地上，水墨画", "width": 256, "height": 256,
            "steps": 3, "seed": 8}
    cat = run(client, body)
    assert cat["warnings"] == []
    dog = run(client, {**body, "prompt": "一只狗在草地上，水墨画"})
    assert (pixels(client, cat) != pixels(client, dog)).any()  # the Chinese characters reach the model
    long = run(client, {**body, "prompt": "山" * 80})  # 80 BERT tokens + [CLS] + [SEP] > 77
    assert any("truncated" in w for w in long["warnings"])


def test_a_canny_controlnet_job(client):
    body = {"task": "txt2img", "prompt": "a house", "width": 256, "height": 256, "steps": 3, "seed": 2,
            "control": [{"model": "tiny-sd-canny", "image": EDGES, "scale": 0.9, "end": 0.8}]}
    job = run(client, body)
    assert job["params"]["control"] == [
        {"model": "tiny-sd-canny", "kind": "canny", "scale": 0.9, "start": 0.0, "end": 0.8, "preprocess": "canny",
         "image": {"name": "control-0.png", "width": 192, "height": 128}}]
    plain = run(client, {**body, "control": []})
    again = run(client, body)
    assert (pixels(client, job) == pixels(client, again)).all()
    assert np.abs(pixels(client, job) - pixels(client, plain)).max() > 10
    sdxl = run(client, {"task": "sdxl", "prompt": "a house", "width": 256, "height": 256, "steps": 4,
                        "control": [{"model": "tiny-canny", "image": EDGES}]})
    assert sdxl["params"]["refiner"] is True and sdxl["params"]["control"][0]["model"] == "tiny-canny"


MODELS_YAML = """\
models:
  fam-single:                       # one .safetensors file in the original layout
    kind: sd
    source: finetune.safetensors
    config: sd-config
    device: cpu
  fam-pai:
    kind: sd
    source: pai                     # pickled weights, as PAI-Diffusion publishes them
    trust_pickle: true
    device: cpu
  fam-elsewhere:                    # served by another worker group: this worker must not load it
    kind: sd
    source: does-not-exist/here
controlnets:
  fam-canny: {kind: canny, source: canny, base: sd}
defaults:
  txt2img: fam-single
  img2img: fam-single
"""


@pytest.fixture(scope="module")
def family_stack(redis_url, tmp_path_factory):
    root = tmp_path_factory.mktemp("family-models")
    model_dirs.save_single_file(root / "finetune.safetensors", root / "sd-config", seed=6)
    model_dirs.save_pai(root / "pai")
    model_dirs.save_controlnet(root / "canny")
    (root / "models.yaml").write_text(MODELS_YAML)
    env = {"FRESCO_MODELS_FILE": str(root / "models.yaml"), "FRESCO_WORKER_MODELS": "fam-single,fam-pai"}
    with Stack(redis_url, tmp_path_factory.mktemp("family-data"), env=env) as s:
        yield s


def test_single_file_and_pickled_models_from_a_models_file(family_stack):
    with family_stack.client() as client:
        models = {m["name"]: m for m in client.get("/models").json()["tasks"]["txt2img"]["models"]}
        assert {n: m["loaded"] for n, m in models.items()} == \
            {"fam-single": True, "fam-pai": True, "fam-elsewhere": False}
        assert [c["name"] for c in models["fam-single"]["controlnets"]] == ["fam-canny"]
        job = run(client, {"task": "txt2img", "prompt": "a boat", "width": 256, "height": 256, "steps": 2,
                           "seed": 3, "control": [{"model": "fam-canny", "image": EDGES}]})
        assert job["model"] == "fam-single"
        from workers.families.sd import tiny_sd

        import torch
        plain = run(client, {"task": "txt2img", "prompt": "a boat", "width": 256, "height": 256, "steps": 2,
                             "seed": 3})
        expected = tiny_sd(seed=6)(  # the pipeline the file was written from, run in this process
            "a boat", width=256, height=256, num_inference_steps=2, guidance_scale=7.5,
            generator=torch.Generator().manual_seed(3)).images[0]
        assert np.abs(pixels(client, plain) - np.asarray(expected, dtype=np.int16)).max() <= 1
        assert not (pixels(client, plain) == pixels(client, job)).all()
        zh = run(client, {"task": "img2img", "model": "fam-pai", "prompt": "江南水乡", "image": EDGES, "steps": 4})
        assert pixels(client, zh).shape == (128, 192, 3)
        # The worker loaded only what FRESCO_WORKER_MODELS names: fam-elsewhere's source does not even
        # exist, so loading it would have stopped the worker; it runs, and serves the other two.
        assert family_stack.workers[0].poll() is None
        assert client.get("/readyz").json()["missing_tasks"] == []
    assert "Loading pipeline components" not in (family_stack.logs / "worker0.log").read_text()


def test_cli_generate_txt2img_with_control(stack, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    edges = tmp_path / "edges.png"
    Image.effect_mandelbrot((96, 64), (-2, -1.2, 1, 1.2), 60).convert("RGB").save(edges)
    cli = [sys.executable, "-m", "service.cli", "generate", "txt2img", "--url", stack.url, "--out", str(tmp_path)]
    r = subprocess.run([*cli, "--prompt", "a house", "--control", f"tiny-sd-canny={edges}:0.7",
                        "--param", "width=256", "--param", "height=256", "--param", "steps=2"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(list(tmp_path.glob("*.png"))) == 2  # the control image and the result
    r = subprocess.run([*cli, "--prompt", "x", "--control", f"tiny-canny={edges}"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and "control[0].model: does not fit model tiny-sd" in r.stderr
    r = subprocess.run([*cli, "--prompt", "x", "--control", "tiny-sd-canny"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "--control takes" in r.stderr
