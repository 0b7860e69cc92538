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
from workers.previews import MAX_SIDE, Previewer, denoised_scale, load_previewer, packed_grid, preview_size, unpack


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


# The last latent channel's row of each family's factors plus its bias: ComfyUI's (comfy/latent_formats.py).
LAST_CHANNEL_RGB = {
    "sd": (4, (-0.2120, -0.2616, -0.7177)),
    "sdxl": (4, np.array([-0.3165, -0.2492, -0.2188]) + np.array([0.1084, -0.0175, -0.0011])),
    "sd3": (16, np.array([-0.1448, -0.1463, -0.1189]) + np.array([0.2394, 0.2135, 0.1925])),
    "flux": (16, np.array([-0.1262, -0.0982, -0.0778]) + np.array([-0.0329, -0.0718, -0.0851])),
}


@pytest.mark.parametrize("family", LAST_CHANNEL_RGB)
def test_the_linear_decoder_maps_latent_channels_to_rgb_by_family(family):
    # One latent channel lit: the preview's colour is that channel's row of the family's factors (SD 3's and
    # FLUX's latents as the transformer sees them: shifted and scaled by the VAE's factors, nothing undone).
    channels, rgb = LAST_CHANNEL_RGB[family]
    latents = torch.zeros(channels, 16, 24)
    latents[-1] = 1.0
    image = np.asarray(decode(Previewer(FAMILIES[family]).render(latents)).convert("RGB"), dtype=float)
    assert image.shape == (16, 24, 3)  # one pixel per latent
    # WebP is lossy, and subsamples colour
    assert np.abs(image.mean(axis=(0, 1)) - (np.asarray(rgb) + 1) * 127.5).max() < 6


@pytest.mark.parametrize("width, height", [(1024, 1024), (1024, 576), (200, 120), (64, 512), (48, 16)])
def test_flux_packed_latents_unpack_as_its_pipeline_does(width, height):
    from diffusers import FluxPipeline

    scale = 8  # FLUX.1's VAE; the pipeline's latents are 2 × (side // 16) a side, packed 2×2
    h, w = 2 * (height // (scale * 2)), 2 * (width // (scale * 2))
    latents = torch.randn(2, 16, h, w)
    packed = FluxPipeline._pack_latents(latents, 2, 16, h, w)
    expected = FluxPipeline._unpack_latents(packed, height, width, scale)
    assert torch.equal(unpack(packed[1], 2, width, height), expected[1])
    assert torch.equal(unpack(packed[1], 2, width * 2, height * 2), expected[1])  # a hires pass: same shape
    assert packed_grid(h * w // 4, width, height) == (h // 2, w // 2)


def test_a_flux_preview_is_of_its_unpacked_latents():
    from diffusers import FluxPipeline

    flux = Previewer(FAMILIES["flux"])
    latents = torch.randn(16, 8, 24)  # a 192 × 64 image's
    packed = FluxPipeline._pack_latents(latents[None], 1, 16, 8, 24)[0]
    assert packed.shape == (48, 64)
    assert flux.render(packed, size=(192, 64)) == flux.render(latents)
    assert decode(flux.render(packed, size=(192, 64))).size == (24, 8)


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


@pytest.mark.parametrize("scheduler", ["FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler"])
def test_flow_matching_latents_are_shown_as_they_are(scheduler):
    # x_t = (1 - σ)·x0 + σ·noise: at the data's scale at every step, even the first (σ = 1: pure noise)
    import diffusers

    flow = getattr(diffusers, scheduler)()
    flow.set_timesteps(4)
    for index in range(len(flow.sigmas)):
        flow._step_index = index
        assert denoised_scale(flow) == 1.0


def tiny_autoencoder(path, channels: int = 4, **config):
    """A TAESD-shaped `AutoencoderTiny` of `channels` latent channels (TAESD, TAESDXL: 4; TAESD3, TAEF1: 16),
    saved at `path`."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    AutoencoderTiny(encoder_block_out_channels=(4, 4, 4, 4), decoder_block_out_channels=(4, 4, 4, 4),
                    num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1),
                    latent_channels=channels, **config).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_a_tiny_autoencoder_named_by_the_models_file_decodes_previews(tmp_path, family):
    channels = len(FAMILIES[family].preview_factors[0])
    previewer = load_previewer(FAMILIES[family], tiny_autoencoder(tmp_path / "taesd", channels), torch.device("cpu"),
                               torch.float32)
    assert previewer.kind == "taesd" and Previewer(FAMILIES[family]).kind == "linear"
    latents = torch.randn(channels, 16, 8)
    image = decode(previewer.render(latents))
    assert image.size == (64, 128)  # the decoder's own size: 8 pixels per latent
    assert decode(previewer.render(torch.randn(channels, 64, 32))).size == (128, 256)  # scaled down to ≤ 256
    assert previewer.render(latents) != Previewer(FAMILIES[family]).render(latents)


def test_taef1_decodes_flux_packed_latents_as_its_pipeline_would(tmp_path):
    """A tiny autoencoder is decoded as a pipeline would decode with it as its VAE: its config's scaling
    and shift undone first (a no-op for TAESD's 1 and 0); FLUX's latents unpacked first."""
    from diffusers import FluxPipeline

    flux = FAMILIES["flux"]
    plain = load_previewer(flux, tiny_autoencoder(tmp_path / "plain", 16), torch.device("cpu"), torch.float32)
    scaled = load_previewer(flux, tiny_autoencoder(tmp_path / "scaled", 16, scaling_factor=0.5, shift_factor=0.25),
                            torch.device("cpu"), torch.float32)
    latents = torch.randn(16, 4, 12)
    packed = FluxPipeline._pack_latents(latents[None], 1, 16, 4, 12)[0]
    assert decode(plain.render(packed, size=(96, 32))).size == (96, 32)
    assert plain.render(packed, size=(96, 32)) == plain.render(latents)
    assert scaled.render(latents) == plain.render(latents / 0.5 + 0.25)


def test_a_tiny_autoencoder_for_other_latents_is_refused_at_load(tmp_path):
    taesdxl = tiny_autoencoder(tmp_path / "taesdxl", 4)
    with pytest.raises(ValueError, match="4-channel latents; flux models' have 16"):
        load_previewer(FAMILIES["flux"], taesdxl, torch.device("cpu"), torch.float32)


# ---------------------------------------------------------------- through a real runner


@pytest.fixture(scope="module")
def runner(module_server, tmp_path_factory):
    return make_runner(module_server.url, tmp_path_factory.mktemp("previews-data"), "previews-test",
                       tiny_catalog(), worker_tasks=["turbo", "sdxl", "svd", "txt2img"], preview_every_steps=2,
                       worker_models=["tiny-turbo", "tiny-sdxl", "tiny-svd", "tiny-sd3", "tiny-flux"])


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
    """The size of the image's latents (unpacked: FLUX's sides are rounded down to whole 2×2 patches)."""
    loaded = runner.runtime.pipeline(task, model).model
    scale, patch = loaded.pipe.vae_scale_factor, loaded.family.latent_patch
    return width // (scale * patch) * patch, height // (scale * patch) * patch


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


# model -> its task, what it adds to a request, the stages whose latents are previewed
EVERY_FEW_STEPS = {
    "tiny-sdxl": ("sdxl", {"guidance_scale": 5.0, "negative_prompt": "", "scheduler": "euler", "refiner": True,
                           "refiner_switch": 0.5}, {"base", "refiner"}),  # with its refiner: both stages' latents
    "tiny-sd3": ("txt2img", {"guidance_scale": 3.5, "negative_prompt": "", "scheduler": "flow_euler"}, {"denoise"}),
    # FLUX.1-dev: its latents packed 2×2 into a sequence; 200 × 96 is not a whole number of its 16-pixel patches
    "tiny-flux": ("txt2img", {"guidance_scale": 3.5, "scheduler": "flow_euler", "max_sequence_length": 64,
                              "width": 200, "height": 96}, {"denoise"}),
}


@pytest.mark.parametrize("model", EVERY_FEW_STEPS)
def test_a_watched_job_gets_one_every_few_steps_of_its_latents_size(runner, redis, model):
    task, extra, stages = EVERY_FEW_STEPS[model]
    params = {**turbo(4, size=128), "height": 64, "steps": 8, **extra}
    _, events = run(runner, redis, task, model, params, watched=True)
    with_preview = [e["progress"] for e in events if "preview" in e]
    assert {p["stage"] for p in with_preview} == stages, with_preview
    assert 3 <= len(with_preview) <= 5  # 8 steps, every 2nd: not every step
    size = latent_size(runner, task, model, params["width"], params["height"])
    assert all(decode(e["preview"]).size == size for e in events if "preview" in e)


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
