"""Live previews (workers/previews.py): the decoders, and a real runner making them only for the jobs
someone watches, every few steps, carried by the published progress events."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from service.catalog import Catalog, tiny_catalog
from service.jobs import keys
from tests.workers.harness import job, make_runner, pop_and_run, submit, turbo
from workers.families import FAMILIES
from workers.previews import MAX_SIDE, Previewer, denoised_scale, load_previewer, preview_size


def decode(url: str) -> Image.Image:
    head, _, data = url.partition(",")
    assert head == "data:image/webp;base64"
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    assert image.format == "WEBP"
    return image


@pytest.mark.parametrize("size, expected", [((1024, 1024), (256, 256)), ((1024, 576), (256, 144)),
                                            ((64, 128), (64, 128)), ((512, 2048), (64, 256))])
def test_a_preview_has_the_outputs_shape_and_its_longest_side_is_at_most_256(size, expected):
    assert preview_size(*size) == expected and max(expected) <= MAX_SIDE


def test_the_linear_decoder_maps_latent_channels_to_rgb_by_family():
    # One latent channel lit: the preview's colour is that channel's row of the family's factors.
    latents = torch.zeros(4, 16, 24)
    latents[3] = 1.0
    sd = np.asarray(decode(Previewer(FAMILIES["sd"]).render(latents)).convert("RGB"), dtype=float)
    sdxl = np.asarray(decode(Previewer(FAMILIES["sdxl"]).render(latents)).convert("RGB"), dtype=float)
    assert sd.shape == (16, 24, 3) and sdxl.shape == (16, 24, 3)  # one pixel per latent
    expected_sd = (np.array([-0.2120, -0.2616, -0.7177]) + 1) * 127.5
    expected_sdxl = (np.array([-0.3165, -0.2492, -0.2188]) + np.array([0.1084, -0.0175, -0.0011]) + 1) * 127.5
    assert np.abs(sd.mean(axis=(0, 1)) - expected_sd).max() < 6  # WebP is lossy, and subsamples colour
    assert np.abs(sdxl.mean(axis=(0, 1)) - expected_sdxl).max() < 6


def test_a_video_preview_shows_the_middle_frame():
    frames = torch.full((5, 4, 8, 8), -3.0)
    frames[2] = 3.0  # the middle frame, bright
    previewer = Previewer(FAMILIES["svd"])
    assert previewer.render(frames) == previewer.render(frames[2])


def test_noise_at_a_high_sigma_is_scaled_down_as_the_unets_input_is():
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    euler = EulerDiscreteScheduler()
    euler.set_timesteps(10)
    assert denoised_scale(euler) == 1.0  # not stepping yet
    euler._step_index = 1  # after the first step: the latents are at the second sigma
    assert denoised_scale(euler) == pytest.approx(1 / (float(euler.sigmas[1]) ** 2 + 1) ** 0.5)
    euler._step_index = 10  # after the last step: sigma 0, the latents are the image's
    assert denoised_scale(euler) == 1.0
    ddim = DDIMScheduler()
    ddim.set_timesteps(10)
    assert denoised_scale(ddim) == 1.0  # its latents are already unit-variance


def test_a_tiny_autoencoder_named_by_the_models_file_decodes_previews(tmp_path):
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    AutoencoderTiny(encoder_block_out_channels=(4, 4, 4, 4), decoder_block_out_channels=(4, 4, 4, 4),
                    num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1),
                    latent_channels=4).save_pretrained(tmp_path / "taesd")
    previewer = load_previewer(FAMILIES["sdxl"], str(tmp_path / "taesd"), torch.device("cpu"), torch.float32)
    assert previewer.kind == "taesd" and Previewer(FAMILIES["sdxl"]).kind == "linear"
    latents = torch.randn(4, 16, 8)
    image = decode(previewer.render(latents))
    assert image.size == (64, 128)  # the decoder's own size: 8 pixels per latent
    assert decode(previewer.render(torch.randn(4, 64, 32))).size == (128, 256)  # scaled down to ≤ 256
    assert previewer.render(latents) != Previewer(FAMILIES["sdxl"]).render(latents)


# ---------------------------------------------------------------- through a real runner


@pytest.fixture(scope="module")
def runner(module_server, tmp_path_factory):
    return make_runner(module_server.url, tmp_path_factory.mktemp("previews-data"), "previews-test",
                       tiny_catalog(), worker_tasks=["turbo", "sdxl", "svd"], preview_every_steps=2)


@pytest.fixture
def redis(module_redis, runner):
    runner.settings.previews = True
    yield module_redis
    runner.settings.previews = True


class Published:
    """The progress events published on one job's channel while it runs."""

    def __init__(self, redis, job_id: str):
        self.pubsub = redis.pubsub()
        self.pubsub.subscribe(keys.events(job_id))
        assert self.pubsub.get_message(timeout=2)["type"] == "subscribe"

    def progress(self) -> list[dict]:
        out = []
        while (m := self.pubsub.get_message(timeout=0.2)) is not None:
            event = json.loads(m["data"])
            if event["type"] == "progress":
                out.append(event)
        return out


def run(runner, redis, task: str, model: str, params: dict, watched: bool, image: bool = False):
    job_id = submit(redis, task, model, params)
    if image:
        buf = io.BytesIO()
        Image.new("RGB", (128, 64), (200, 60, 30)).save(buf, "PNG")
        runner.storage.put(job_id, "input.png", buf.getvalue())
    if watched:
        redis.set(keys.watched(job_id), "1", px=30_000)  # as the API's previews stream does
    events = Published(redis, job_id)
    assert pop_and_run(runner, redis, task, model) == {"status": "succeeded"}, job(redis, job_id)
    return job_id, events.progress()


def latent_size(runner, task: str, model: str, width: int, height: int) -> tuple[int, int]:
    scale = runner.runtime.pipeline(task, model).model.pipe.vae_scale_factor
    return width // scale, height // scale


def test_a_watched_one_step_turbo_job_gets_a_preview(runner, redis):
    job_id, events = run(runner, redis, "turbo", "tiny-turbo", turbo(1, size=128), watched=True)
    previews = [e["preview"] for e in events if "preview" in e]
    assert len(previews) == 1 and decode(previews[0]).size == latent_size(runner, "turbo", "tiny-turbo", 128, 128)
    assert redis.get(keys.preview(job_id)).decode() == previews[0]  # the latest, for late watchers


def test_an_unwatched_job_gets_none(runner, redis):
    job_id, events = run(runner, redis, "turbo", "tiny-turbo", turbo(2, size=128), watched=False)
    assert events and not any("preview" in e for e in events)
    assert redis.get(keys.preview(job_id)) is None


def test_previews_off_on_the_worker_means_none_even_when_watched(runner, redis):
    runner.settings.previews = False
    _, events = run(runner, redis, "turbo", "tiny-turbo", turbo(3, size=128), watched=True)
    assert events and not any("preview" in e for e in events)


def test_sdxl_with_its_refiner_gets_one_every_few_steps(runner, redis):
    params = {**turbo(4, size=128), "steps": 8, "guidance_scale": 5.0, "negative_prompt": "", "scheduler": "euler",
              "refiner": True, "refiner_switch": 0.5}
    _, events = run(runner, redis, "sdxl", "tiny-sdxl", params, watched=True)
    with_preview = [e["progress"] for e in events if "preview" in e]
    stages = {p["stage"] for p in with_preview}
    assert {"base", "refiner"} <= stages, with_preview  # both stages' latents
    assert 3 <= len(with_preview) <= 5  # 8 steps, every 2nd: not every step
    assert all(decode(e["preview"]).size == latent_size(runner, "sdxl", "tiny-sdxl", 128, 128)
               for e in events if "preview" in e)


def test_an_svd_job_previews_its_middle_frame(runner, redis):
    params = {"prompt": "", "seed": 1, "width": 128, "height": 64, "num_frames": 4, "steps": 2, "fps": 7,
              "motion_bucket_id": 127, "noise_aug_strength": 0.02, "min_guidance_scale": 1.0,
              "max_guidance_scale": 3.0, "decode_chunk_size": 4, "output_format": "mp4",
              "image": {"name": "input.png", "width": 128, "height": 64}}
    _, events = run(runner, redis, "svd", "tiny-svd", params, watched=True, image=True)
    previews = [e["preview"] for e in events if "preview" in e]
    assert previews and decode(previews[0]).size == latent_size(runner, "svd", "tiny-svd", 128, 64)


def test_a_model_with_a_preview_decoder_loads_it(tmp_path):
    from diffusers import AutoencoderTiny

    from workers.models import load_model

    AutoencoderTiny(encoder_block_out_channels=(4, 4, 4, 4), decoder_block_out_channels=(4, 4, 4, 4),
                    num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1),
                    latent_channels=4).save_pretrained(tmp_path / "taesd")
    catalog = tiny_catalog()
    spec = catalog.spec("tiny-turbo").model_copy(update={"preview_decoder": str(tmp_path / "taesd")})
    assert load_model(spec).previewer.kind == "taesd"
    assert load_model(catalog.spec("tiny-turbo")).previewer.kind == "linear"
    assert isinstance(Catalog.model_validate({"models": {"x": {"kind": "sdxl", "source": "tiny",
                                                               "preview_decoder": "madebyollin/taesdxl"}}}), Catalog)
