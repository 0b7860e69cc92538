"""Live previews through real API and worker processes: `GET /jobs/{id}/events?previews=true`, the Python
client's `events(previews=True)`, and AUTOMATIC1111's `/sdapi/v1/progress` `current_image`; none made for
a job nobody watches."""

from __future__ import annotations

import base64
import io
import threading
import time

import httpx
import pytest
from PIL import Image

from service.client import Client, DoneEvent, ProgressEvent
from service.jobs import keys
from service.redis import sync_client
from tests.conftest import Stack


@pytest.fixture(scope="module")
def stack(module_server, tmp_path_factory):
    # Steps paced at 50 ms so a stream opened after the submit sees the job run (tiny steps take ~1 ms).
    with Stack(module_server.url, tmp_path_factory.mktemp("previews-data"),
               {"FRESCO_STEP_DELAY_S": "0.05", "FRESCO_PREVIEW_EVERY_STEPS": "2"},
               profile=("tiny-sdxl", "tiny-sd3", "tiny-flux")) as s:
        yield s


@pytest.fixture
def redis(module_server):
    r = sync_client(module_server.url)
    yield r
    r.close()


def webp(url: str) -> Image.Image:
    head, _, data = url.partition(",")
    assert head == "data:image/webp;base64"
    return Image.open(io.BytesIO(base64.b64decode(data)))


SDXL = {"prompt": "a lighthouse at dusk", "width": 384, "height": 256, "steps": 12, "seed": 3}
# SD 3 and FLUX.1 (16-channel latents; FLUX's packed 2×2 into a sequence) on their text-to-image task
JOBS = {"tiny-sdxl": ("sdxl", SDXL), "tiny-sd3": ("txt2img", {**SDXL, "model": "tiny-sd3"}),
        "tiny-flux": ("txt2img", {**SDXL, "model": "tiny-flux"})}


@pytest.mark.parametrize("model", JOBS)
def test_a_previews_stream_gets_previews_every_few_steps(stack, redis, model):
    task, params = JOBS[model]
    with Client(stack.url) as client:
        job = client.submit(task, **params)
        events = list(client.events(job, previews=True))
    assert isinstance(events[-1], DoneEvent) and events[-1].job.status == "succeeded"
    previews = [e for e in events if isinstance(e, ProgressEvent) and e.preview]
    assert len(previews) >= 2, [(type(e).__name__, getattr(e, "progress", None)) for e in events]
    for e in previews:  # the output's shape (one pixel per latent), longest side ≤ 256
        width, height = webp(e.preview).size
        assert width <= 256 and width * 256 == height * 384
    steps = [e.progress.step for e in events if isinstance(e, ProgressEvent)]
    assert len(previews) < len(steps)  # every few steps, not every one
    assert 0 < redis.pttl(keys.watched(job.id)) <= 10_000  # the stream's watch lapses on its own


def test_a_plain_stream_gets_none_and_no_preview_is_made(stack, redis):
    with Client(stack.url) as client:
        job = client.submit("sdxl", **{**SDXL, "seed": 4})
        events = list(client.events(job))
    assert isinstance(events[-1], DoneEvent) and events[-1].job.status == "succeeded"
    assert not any(getattr(e, "preview", None) for e in events)
    assert redis.get(keys.preview(job.id)) is None and redis.get(keys.watched(job.id)) is None


def test_the_raw_event_stream_carries_preview_beside_progress(stack):
    with httpx.Client(base_url=stack.url, timeout=30) as c:
        job_id = c.post("/generate", json={"task": "sdxl", **SDXL, "seed": 5}).json()["id"]
        with c.stream("GET", f"/jobs/{job_id}/events", params={"previews": "true"}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            text = "".join(r.iter_text())
    blocks = [b for b in text.split("\n\n") if b.startswith("event: progress")]
    assert any('"preview":"data:image/webp;base64,' in b for b in blocks)
    assert text.rstrip().split("\n\n")[-1].startswith("event: done")


def test_an_a1111_client_polling_progress_sees_current_image(stack):
    """SillyTavern and the A1111 web UI poll /progress while txt2img runs, and show `current_image`."""
    answer = {}

    def generate():
        answer["r"] = httpx.post(stack.url + "/sdapi/v1/txt2img", json={
            "prompt": "a red fox", "steps": 30, "width": 256, "height": 256, "seed": 9}, timeout=120)

    thread = threading.Thread(target=generate)
    thread.start()
    images, deadline = [], time.time() + 60
    while thread.is_alive() and time.time() < deadline:
        p = httpx.get(stack.url + "/sdapi/v1/progress", timeout=10).json()
        if p["current_image"]:
            images.append(p["current_image"])
        time.sleep(0.1)
    thread.join()
    assert answer["r"].status_code == 200, answer["r"].text
    assert images, "no current_image while the call ran"
    width, height = Image.open(io.BytesIO(base64.b64decode(images[-1]))).size
    assert width == height <= 256
    skipped = httpx.get(stack.url + "/sdapi/v1/progress", params={"skip_current_image": "true"}).json()
    assert skipped["current_image"] is None
