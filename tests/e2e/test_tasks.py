"""One job per task through HTTP, Redis, a real worker process and storage, with tiny real pipelines."""

from __future__ import annotations

import io
import json
import time

import av
import numpy as np
import pytest
from PIL import Image

from tests.conftest import png_data_url, wait_status

DONE = {"succeeded", "failed", "canceled"}


def run(client, body, timeout=60) -> dict:
    r = client.post("/generate", json=body)
    assert r.status_code == 202, r.text
    job = wait_status(client, r.json()["id"], DONE, timeout)
    assert job["status"] == "succeeded", job
    return job


def fetch(client, url) -> tuple[bytes, str]:
    r = client.get(url)
    assert r.status_code == 200
    return r.content, r.headers["content-type"]


def test_sdxl_base_and_refiner(client):
    job = run(client, {"task": "sdxl", "prompt": "a lighthouse at dusk", "width": 512, "height": 384, "steps": 10,
                       "num_images": 2, "seed": 11})
    assert job["params"]["refiner"] is True
    images = job["result"]["images"]
    assert [i["seed"] for i in images] == [11, 12]
    for item in images:
        data, ctype = fetch(client, item["url"])
        assert ctype == "image/png"
        assert Image.open(io.BytesIO(data)).size == (512, 384) == (item["width"], item["height"])
    t = job["timings"]
    assert t["queue_s"] >= 0 and t["inference_s"] > 0 and t["encode_s"] >= 0 and t["store_s"] >= 0
    assert t["total_s"] >= t["inference_s"]
    assert job["progress"]["fraction"] == 1.0 and job["started_at"] and job["finished_at"]


def test_sdxl_without_refiner_and_other_scheduler_jpeg(client):
    job = run(client, {"task": "sdxl", "prompt": "x", "width": 256, "height": 256, "steps": 4, "refiner": False,
                       "scheduler": "dpmpp_2m_karras", "output_format": "jpeg"})
    data, ctype = fetch(client, job["result"]["images"][0]["url"])
    assert ctype == "image/jpeg" and Image.open(io.BytesIO(data)).format == "JPEG"


def test_turbo(client):
    job = run(client, {"task": "turbo", "prompt": "a cat", "num_images": 3, "output_format": "webp"})
    assert job["params"]["guidance_scale"] == 0.0
    assert len(job["result"]["images"]) == 3
    data, ctype = fetch(client, job["result"]["images"][2]["url"])
    assert ctype == "image/webp" and Image.open(io.BytesIO(data)).size == (512, 512)


def test_turbo_with_the_tiny_profiles_loras_and_embedding(client):
    """The README tour's adapter request: two of the tiny profile's LoRAs, its embedding's token."""
    body = {"task": "turbo", "prompt": "a <tiny-cat> in the snow", "seed": 7, "width": 256, "height": 256,
            "loras": [{"name": "tiny-style", "scale": 0.8}, {"name": "tiny-sketch"}]}
    job = run(client, body)
    loras = job["params"]["loras"]
    assert [(e["name"], e["scale"]) for e in loras] == [("tiny-style", 0.8), ("tiny-sketch", 0.8)]
    assert all(e["digest"].startswith("sha256:") and len(e["digest"]) == 71 for e in loras)
    with_loras, _ = fetch(client, job["result"]["images"][0]["url"])
    plain, _ = fetch(client, run(client, {**body, "loras": []})["result"]["images"][0]["url"])
    again, _ = fetch(client, run(client, body)["result"]["images"][0]["url"])
    assert with_loras == again and with_loras != plain
    models = client.get("/models").json()["tasks"]["turbo"]["models"][0]
    assert {a["name"] for a in models["adapters"]} == {"tiny-style", "tiny-sketch", "tiny-cat"}


def test_cli_generate_with_loras(stack, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    r = subprocess.run([sys.executable, "-m", "service.cli", "generate", "turbo", "--prompt", "a <tiny-cat>",
                        "--lora", "tiny-style:0.5", "--lora", "tiny-sketch", "--param", "width=256",
                        "--param", "height=256", "--url", stack.url, "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(list(tmp_path.glob("*.png"))) == 1
    r = subprocess.run([sys.executable, "-m", "service.cli", "generate", "turbo", "--prompt", "x", "--lora",
                        "tiny-cat", "--url", stack.url, "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "loras[0].name: is an embedding" in r.stderr


@pytest.mark.parametrize("model, size", [(None, (328, 248)),  # the default, tiny-sdxl: multiples of 8
                                         ("tiny-sd3", (320, 240)), ("tiny-flux", (320, 240))])  # of 16
def test_img2img_keeps_input_size_floored(client, model, size):
    body = {"task": "img2img", "prompt": "a watercolor", "image": png_data_url(333, 250), "steps": 6}
    job = run(client, {**body, "model": model} if model else body)
    assert (job["params"]["width"], job["params"]["height"]) == size
    data, _ = fetch(client, job["result"]["images"][0]["url"])
    assert Image.open(io.BytesIO(data)).size == size
    assert job["params"]["image"]["url"].endswith("/input.png")  # the stored input is reported, not echoed


def test_img2img_on_turbo_model(client):
    job = run(client, {"task": "img2img", "model": "tiny-turbo", "prompt": "x", "image": png_data_url(256, 256),
                       "steps": 2, "strength": 0.5})
    assert job["model"] == "tiny-turbo" and job["params"]["guidance_scale"] == 0.0


@pytest.mark.parametrize("fmt,ctype", [("mp4", "video/mp4"), ("gif", "image/gif"), ("webp", "image/webp")])
def test_svd_video(client, fmt, ctype):
    body = {"task": "svd", "image": png_data_url(512, 288), "width": 256, "height": 192, "num_frames": 6,
            "fps": 9, "steps": 3, "decode_chunk_size": 4, "output_format": fmt, "seed": 5}
    job = run(client, body)
    video = job["result"]["video"]
    assert (video["num_frames"], video["fps"], video["width"], video["height"], video["seed"]) == (6, 9, 256, 192, 5)
    data, got = fetch(client, video["url"])
    assert got == ctype
    if fmt == "mp4":
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            frames = sum(1 for _ in container.decode(stream))
            assert stream.codec_context.name == "h264"
            assert stream.codec_context.pix_fmt == "yuv420p"
            assert (stream.width, stream.height) == (256, 192)
            assert frames == 6 and stream.average_rate == 9
    else:
        img = Image.open(io.BytesIO(data))
        assert img.n_frames == 6 and img.size == (256, 192)


def test_svd_defaults_use_the_models_frame_count(client):
    job = run(client, {"task": "svd", "image": png_data_url(64, 64), "steps": 2, "width": 128, "height": 64})
    assert job["params"]["num_frames"] == 14 and job["result"]["video"]["num_frames"] == 14


def test_same_seed_same_pixels_alone_or_in_a_batch(client):
    batch = run(client, {"task": "turbo", "prompt": "seeded", "num_images": 3, "seed": 100, "width": 256, "height": 256})
    alone = run(client, {"task": "turbo", "prompt": "seeded", "seed": 101, "width": 256, "height": 256})
    again = run(client, {"task": "turbo", "prompt": "seeded", "seed": 101, "width": 256, "height": 256})
    pixels = [np.asarray(Image.open(io.BytesIO(fetch(client, j["result"]["images"][i]["url"])[0])), dtype=np.int16)
              for j, i in ((batch, 1), (alone, 0), (again, 0))]
    assert np.array_equal(pixels[1], pixels[2])  # the same request: the same bytes
    # In a batch, float kernels may round differently (~1e-6), so at most one level in a few pixels.
    assert np.abs(pixels[0] - pixels[1]).max() <= 1
    assert (pixels[0] != pixels[1]).mean() < 0.01
    other = np.asarray(Image.open(io.BytesIO(fetch(client, batch["result"]["images"][0]["url"])[0])), dtype=np.int16)
    assert np.abs(other - pixels[0]).mean() > 5  # another seed: another image


def test_prefer_wait_returns_the_finished_job(client):
    r = client.post("/generate", json={"task": "turbo", "prompt": "x", "width": 256, "height": 256},
                    headers={"Prefer": "wait=30"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "succeeded" and r.headers["preference-applied"] == "wait=30"
    assert r.headers["location"] == f"/jobs/{r.json()['id']}"


def test_long_poll_wakes_when_the_job_ends(client):
    r = client.post("/generate", json={"task": "turbo", "prompt": "x", "width": 256, "height": 256})
    start = time.monotonic()
    job = client.get(f"/jobs/{r.json()['id']}", params={"wait": 30}).json()
    elapsed = time.monotonic() - start
    assert job["status"] == "succeeded"
    assert elapsed < 10  # woke on the event, not at the 30 s deadline
    # And on a job that is already over, at once.
    start = time.monotonic()
    client.get(f"/jobs/{job['id']}", params={"wait": 30})
    assert time.monotonic() - start < 1


def read_sse(client, job_id) -> list[tuple[str, dict]]:
    events, name = [], None
    with client.stream("GET", f"/jobs/{job_id}/events") as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                events.append((name, json.loads(line[5:])))
                if name == "done":
                    break
    return events


def test_events_stream_progress_monotonic_to_one(client):
    r = client.post("/generate", json={"task": "sdxl", "prompt": "x", "width": 256, "height": 256, "steps": 10})
    events = read_sse(client, r.json()["id"])
    assert events[-1][0] == "done" and events[-1][1]["status"] == "succeeded"
    progress = [e[1]["progress"] for e in events]
    fractions = [p["fraction"] for p in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    stages = [p["stage"] for p in progress]
    for stage in ("base", "refiner", "decode", "encode", "store"):
        assert stage in stages, stages
    base_steps = [p["step"] for p in progress if p["stage"] == "base"]
    assert max(base_steps) == 8  # 10 steps, switch 0.8: the base runs 8 and the refiner 2
    assert len(events) >= 12  # one event per step, not a summary


def test_cancel_queued_job_never_runs(client):
    blocker = client.post("/generate", json={"task": "svd", "image": png_data_url(64, 64), "width": 256,
                                             "height": 128, "num_frames": 14, "steps": 40}).json()
    wait_status(client, blocker["id"], {"running"} | DONE)
    queued = client.post("/generate", json={"task": "turbo", "prompt": "never", "width": 256, "height": 256}).json()
    assert client.get(f"/jobs/{queued['id']}").json()["status"] == "queued"
    r = client.delete(f"/jobs/{queued['id']}")
    assert r.status_code == 202 and r.json()["status"] == "canceled"
    assert r.json()["error"]["code"] == "canceled"
    client.delete(f"/jobs/{blocker['id']}")
    wait_status(client, blocker["id"], DONE)
    time.sleep(0.5)
    job = client.get(f"/jobs/{queued['id']}").json()
    assert job["status"] == "canceled" and job["started_at"] is None and job["result"] is None
    assert client.delete(f"/jobs/{queued['id']}").status_code == 409  # already ended


def test_cancel_running_job_stops_at_next_step(client):
    job = client.post("/generate", json={"task": "svd", "image": png_data_url(64, 64), "width": 256, "height": 128,
                                         "num_frames": 14, "steps": 60}).json()
    running = wait_status(client, job["id"], {"running"} | DONE)
    assert running["status"] == "running"
    asked = time.monotonic()
    assert client.delete(f"/jobs/{job['id']}").status_code == 202
    ended = wait_status(client, job["id"], DONE, timeout=30)
    assert ended["status"] == "canceled" and ended["error"]["code"] == "canceled"
    assert time.monotonic() - asked < 10
    assert ended["progress"]["step"] < 60 and ended["result"] is None
    assert client.delete(f"/jobs/{job['id']}").status_code == 409


def test_cancel_of_a_finished_job_is_409(client):
    job = run(client, {"task": "turbo", "prompt": "x", "width": 256, "height": 256})
    assert client.delete(f"/jobs/{job['id']}").status_code == 409


def test_long_prompt_accepted_with_a_warning(client):
    job = run(client, {"task": "turbo", "prompt": "word " * 100, "width": 256, "height": 256})
    assert any("truncated" in w for w in job["warnings"])


def test_results_unknown_or_traversal_are_404(client):
    job = run(client, {"task": "turbo", "prompt": "x", "width": 256, "height": 256})
    assert client.get(f"/results/{job['id']}/nope.png").status_code == 404
    assert client.get(f"/results/{job['id']}/..%2F..%2Fredis.db").status_code == 404
    assert client.get("/results/../../etc/passwd").status_code == 404


def test_models_lists_loaded_models_defaults_and_limits(client):
    body = client.get("/models").json()
    assert set(body["tasks"]) == {"sdxl", "turbo", "img2img", "svd", "txt2img", "train", "inpaint", "upscale"}
    sdxl = body["tasks"]["sdxl"]
    assert sdxl["default_model"] == "tiny-sdxl" and sdxl["models"][0]["loaded"] is True
    assert sdxl["models"][0]["refiner"] is True and "euler" in sdxl["schedulers"]
    assert sdxl["parameters"]["steps"] == {"default": 30, "minimum": 1, "maximum": 100}
    assert body["tasks"]["svd"]["models"][0]["max_num_frames"] == 14
    assert {m["name"] for m in body["tasks"]["img2img"]["models"]} == {"tiny-sdxl", "tiny-turbo", "tiny-sd", "tiny-pai",
                                                                      "tiny-sd3", "tiny-flux", "tiny-flux-schnell"}
    assert all(m["loaded"] for task in body["tasks"].values() for m in task["models"])
    assert "noise" in body["note"]


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["missing_tasks"] == []


def test_readiness_scope_api_needs_redis_only(api):
    r = api.get("/readyz", params={"scope": "api"})
    assert r.status_code == 200 and r.json() == {"status": "ready", "redis": True}
