"""`Client` against a real stack (API and worker processes, tiny random-weight models): submit, read,
wait, follow events, cancel, generate and download, with image inputs in every accepted form."""

from __future__ import annotations

import io
import uuid

import pytest
from PIL import Image

from service.client import ConflictError, DoneEvent, Job, JobCanceled, ProgressEvent
from tests.conftest import png_data_url
from tests.service.client.conftest import TURBO

LONG_SVD = {"width": 256, "height": 128, "num_frames": 14, "steps": 100}  # seconds on the CPU: time to cancel


def test_generate_returns_a_succeeded_job_and_downloads_its_image(fresco, tmp_path):
    job = fresco.generate("turbo", **TURBO, seed=7)
    assert isinstance(job, Job) and job.succeeded and job.done and job.error is None
    assert (job.task, job.model, job.seed, job.params["steps"]) == ("turbo", "tiny-turbo", 7, 1)
    [image] = job.images
    assert (image.width, image.height, image.seed, image.content_type) == (256, 256, 7, "image/png")
    assert job.video is None and job.outputs == [image] and job.timings["total_s"] > 0
    [path] = fresco.download(job, tmp_path / "out")
    assert path == tmp_path / "out" / f"{job.id}-0.png" and not list(path.parent.glob("*.part"))
    assert Image.open(path).size == (256, 256)
    relative = image.url.split("://", 1)[1].split("/", 1)[1]
    assert fresco.fetch(image.url) == fresco.fetch("/" + relative) == path.read_bytes()


def test_submit_get_and_wait(fresco):
    job = fresco.submit("sdxl", prompt="x", width=256, height=256, steps=6)
    assert job.status in ("queued", "running", "succeeded") and job.raw["id"] == job.id
    assert fresco.get(job.id).id == job.id
    done = fresco.wait(job)
    assert done.succeeded and done.progress.fraction == 1.0
    assert fresco.get(job, wait=5).status == "succeeded"  # a long-poll of a finished job answers at once
    assert fresco.wait(done) is done  # nothing to wait for


def test_wait_with_a_timeout_returns_the_job_as_it_is(fresco):
    job = fresco.submit("svd", image=png_data_url(64, 64), **LONG_SVD)
    try:
        early = fresco.wait(job, timeout=0.2)
        assert not early.done
    finally:
        fresco.cancel(job)
    assert fresco.wait(job).status == "canceled"


def test_events_report_progress_then_the_terminal_job(fresco):
    job = fresco.submit("sdxl", prompt="x", width=256, height=256, steps=10)
    events = list(fresco.events(job))
    *progress, done = events
    assert isinstance(done, DoneEvent) and done.job.succeeded and done.job.images
    assert progress and all(isinstance(e, ProgressEvent) for e in progress)
    fractions = [e.progress.fraction for e in progress]
    assert fractions == sorted(fractions)
    stages = {e.progress.stage for e in progress}
    assert {"base", "refiner"} <= stages, stages
    assert max(e.progress.step for e in progress if e.progress.stage == "base") == 8
    assert len(set(progress)) == len(progress)  # no event repeated


def test_generate_with_a_progress_callback_follows_the_events(fresco):
    seen = []
    job = fresco.generate("sdxl", prompt="x", width=256, height=256, steps=4, on_progress=seen.append)
    assert job.succeeded and seen and all(isinstance(e, ProgressEvent) for e in seen)


def test_generate_without_waiting_returns_the_queued_job(fresco):
    job = fresco.generate("turbo", **TURBO, wait=False)
    assert not job.done or job.succeeded
    assert fresco.wait(job).succeeded


@pytest.mark.parametrize("form", ["pil", "bytes", "path", "str path", "data url"])
def test_img2img_takes_an_image_in_any_form(fresco, tmp_path, form):
    picture = Image.new("RGB", (100, 72), (20, 120, 200))
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG")
    (tmp_path / "in.jpg").write_bytes(buffer.getvalue())
    image = {"pil": picture, "bytes": buffer.getvalue(), "path": tmp_path / "in.jpg",
             "str path": str(tmp_path / "in.jpg"), "data url": png_data_url(100, 72)}[form]
    job = fresco.generate("img2img", prompt="a watercolor", image=image, steps=4, strength=0.5)
    assert (job.params["width"], job.params["height"]) == (96, 72)  # the input's size, floored to 8
    assert Image.open(io.BytesIO(fresco.fetch(job.params["image"]["url"]))).size == (100, 72)


def test_control_images_are_encoded_too(fresco, tmp_path):
    edges = tmp_path / "edges.png"
    Image.effect_mandelbrot((96, 64), (-2, -1.2, 1, 1.2), 60).convert("RGB").save(edges)
    job = fresco.generate("txt2img", prompt="a house", width=256, height=256, steps=2,
                          control=[{"model": "tiny-sd-canny", "image": edges, "scale": 0.7}])
    assert job.succeeded and job.params["control"][0]["model"] == "tiny-sd-canny"


def test_cancel_ends_a_job_and_generate_raises_job_canceled(fresco, tmp_path):
    job = fresco.submit("svd", image=Image.new("RGB", (64, 64)), **LONG_SVD)
    canceled = fresco.cancel(job)
    assert canceled.id == job.id and canceled.status in ("canceled", "running")
    ended = fresco.wait(job)
    assert ended.status == "canceled" and ended.error.code == "canceled" and not ended.succeeded
    with pytest.raises(JobCanceled) as info:
        ended.raise_for_status()
    assert info.value.code == "canceled" and info.value.job is ended and job.id in str(info.value)
    with pytest.raises(JobCanceled):
        fresco.download(ended, tmp_path)
    with pytest.raises(ConflictError) as conflict:
        fresco.cancel(job)
    assert conflict.value.status == 409 and conflict.value.code == "conflict"


def test_models_health_and_readiness(fresco):
    tasks = fresco.models()["tasks"]
    assert {"turbo", "sdxl", "img2img", "svd", "txt2img"} <= set(tasks)
    assert fresco.health() and fresco.ready()


def test_the_same_idempotency_key_is_the_same_job(fresco):
    key = str(uuid.uuid4())
    first = fresco.submit("turbo", **TURBO, idempotency_key=key)
    again = fresco.submit("turbo", **TURBO, idempotency_key=key)
    other = fresco.submit("turbo", **TURBO)
    assert first.id == again.id != other.id
