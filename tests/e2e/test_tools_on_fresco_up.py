"""The tools the README's "Use it from your tools" names, against `fresco up`: the command `make run` runs,
with nothing set but where it keeps its data and listens (its own embedded Redis, the tiny profile). The
adapters' and the client's own tests (test_openai.py, test_a1111.py, tests/service/client/) go into detail;
this checks the way a user meets them: start Fresco, point the tool at it."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys

import httpx
import openai
import pytest
import webuiapi
from PIL import Image

from service.client import Client
from tests.conftest import ROOT, free_port, wait_until_ok


@pytest.fixture(scope="module")
def fresco_up(tmp_path_factory):
    port = free_port()
    env = {**os.environ, "FRESCO_DATA_DIR": str(tmp_path_factory.mktemp("fresco-up")), "FRESCO_PORT": str(port),
           "FRESCO_WORKER_METRICS_PORT": str(free_port()), "FRESCO_TORCH_THREADS": "1"}
    env.pop("FRESCO_REDIS_URL", None)
    up = subprocess.Popen([sys.executable, "-m", "service.cli", "up"], env=env, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert wait_until_ok(f"http://127.0.0.1:{port}/readyz", [up], 90) == "ok"
        yield port
    finally:
        up.send_signal(signal.SIGTERM)
        out = up.communicate(timeout=60)[0].decode(errors="replace")
    assert up.returncode == 0, out
    host = os.environ.get("FRESCO_HOST", "127.0.0.1")
    assert f"playground: open http://{host}:{port}/ in a browser" in out, out  # what `make run` prints


def test_the_playground_page(fresco_up):
    page = httpx.get(f"http://127.0.0.1:{fresco_up}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Fresco" in page.text


def test_the_openai_sdk(fresco_up):
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{fresco_up}/v1", api_key="anything: keys are off")
    r = client.images.generate(model="tiny-turbo", prompt="a red fox", size="256x256", response_format="b64_json")
    assert Image.open(io.BytesIO(base64.b64decode(r.data[0].b64_json))).size == (256, 256)


def test_webuiapi_and_open_webuis_automatic1111_sequence(fresco_up):
    api = webuiapi.WebUIApi(host="127.0.0.1", port=fresco_up, steps=2)
    r = api.txt2img(prompt="a lighthouse", seed=7, width=256, height=256)
    assert r.images[0].size == (256, 256) and r.info["seed"] == 7
    with httpx.Client(base_url=f"http://127.0.0.1:{fresco_up}", timeout=120) as ow:  # options, sd-models, txt2img
        options = ow.get("/sdapi/v1/options").json()
        title = next(m["title"] for m in ow.get("/sdapi/v1/sd-models").json() if m["model_name"] == "tiny-turbo")
        ow.post("/sdapi/v1/options", json={**options, "sd_model_checkpoint": title}).raise_for_status()
        res = ow.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "batch_size": 1, "width": 256, "height": 256})
    assert res.status_code == 200, res.text
    assert json.loads(res.json()["info"])["sd_model_name"] == "tiny-turbo"


def test_the_python_client(fresco_up, tmp_path):
    stages = []
    with Client(f"http://127.0.0.1:{fresco_up}") as fresco:
        job = fresco.generate("turbo", prompt="a red fox", width=256, height=256, seed=3,
                              on_progress=lambda event: stages.append(event.progress.stage))
        paths = fresco.download(job, tmp_path)
    assert job.succeeded and job.seed == 3 and stages
    assert Image.open(paths[0]).size == (256, 256)
