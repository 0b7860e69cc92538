"""A run as the worker sees it: the hooks (stages, steps, checkpoints, validation images, cancel), and
resuming from a checkpoint, which must redo nothing and change nothing: the steps after it have the
losses, and the files the weights, of the run that never stopped."""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load

from tests.workers.training.common import examples, image
from workers.families import FAMILIES
from workers.families.sd import tiny_sd
from workers.training import Hooks, TrainConfig, train


@pytest.fixture(scope="module")
def sd():
    return tiny_sd()


class Cancelled(Exception):
    pass


class Recorder(Hooks):
    def __init__(self, cancel_at: int | None = None):
        self.stages, self.steps, self.checkpoints, self.validations = [], [], {}, []
        self.cancel_at = cancel_at

    def stage(self, name):
        self.stages.append(name)

    def step(self, step, total, loss):
        self.steps.append((step, total, loss))
        if step == self.cancel_at:
            raise Cancelled(f"cancelled at {step}")

    def checkpoint(self, step, data):
        self.checkpoints[step] = data

    def validation(self, step, images):
        self.validations.append((step, images))


def plain(value) -> bool:
    """Only the types a weights_only load accepts without anything registered: data, no objects."""
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(plain(v) for v in value)
    return value is None or isinstance(value, (torch.Tensor, bool, int, float, str))


def test_hooks_hear_stages_steps_checkpoints_and_validation_images(sd):
    hooks = Recorder()
    config = TrainConfig(steps=4, learning_rate=1e-3, rank=2, resolution=64, checkpoint_every=2,
                         validation_prompt="a red circle", validation_every=2, validation_images=2,
                         validation_steps=2)
    result = train(copy.deepcopy(sd), FAMILIES["sd"], examples(2), config, hooks=hooks)
    assert hooks.stages == ["preparing", "training", "saving"]
    assert [(s, t) for s, t, _ in hooks.steps] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert [loss for _, _, loss in hooks.steps] == result.losses and all(math.isfinite(v) for v in result.losses)
    assert list(hooks.checkpoints) == [2]  # not at the final step
    state = torch.load(io.BytesIO(hooks.checkpoints[2]), weights_only=True)
    assert plain(state) and state["step"] == 2 and state["weights"] and state["optimizer"]["state"]
    assert [step for step, _ in hooks.validations] == [2, 4]
    for _, images in hooks.validations:
        assert len(images) == 2 and all(isinstance(i, Image.Image) and i.size == (64, 64) for i in images)
    assert result.validation == hooks.validations[-1][1]


def test_an_exception_from_the_step_hook_stops_the_run_and_leaves_train(sd):
    hooks = Recorder(cancel_at=2)
    with pytest.raises(Cancelled, match="cancelled at 2"):
        train(copy.deepcopy(sd), FAMILIES["sd"], examples(2), TrainConfig(steps=50, resolution=64, rank=2),
              hooks=hooks)
    assert [s for s, _, _ in hooks.steps] == [1, 2] and "saving" not in hooks.stages


def test_a_resumed_run_does_the_remaining_steps_as_the_uninterrupted_one(sd):
    # Everything that draws or carries state at once: LoRA on the UNet and the text encoder, a new token,
    # two buckets, batches of 2, gradient accumulation, caption dropout, min-SNR and noise offset.
    config = TrainConfig(method="lora+embedding", token="<shp>", init_token="s", steps=8, learning_rate=1e-2,
                         rank=2, resolution=128, batch_size=2, gradient_accumulation=2, train_text_encoder=True,
                         caption_dropout=0.3, min_snr_gamma=5.0, noise_offset=0.05, checkpoint_every=3)
    items = examples(4)
    whole = Recorder()
    trained = copy.deepcopy(sd)
    uninterrupted = train(trained, FAMILIES["sd"], items, config, hooks=whole)
    assert list(whole.checkpoints) == [3, 6]

    stopped = Recorder(cancel_at=7)  # another run, stopped after its step-6 checkpoint
    with pytest.raises(Cancelled):
        train(copy.deepcopy(sd), FAMILIES["sd"], items, config, hooks=stopped)
    assert list(stopped.checkpoints) == [3, 6]

    again = Recorder()
    resumed = train(copy.deepcopy(sd), FAMILIES["sd"], items, config, hooks=again, resume=stopped.checkpoints[6])
    assert resumed.resumed_from == 6 and resumed.steps == 8
    assert [s for s, _, _ in again.steps] == [7, 8] and list(again.checkpoints) == []
    assert len(resumed.losses) == 2
    assert torch.allclose(torch.tensor(resumed.losses), torch.tensor(uninterrupted.losses[6:]), rtol=1e-4)
    for key in ("lora", "embedding"):
        a, b = load(getattr(uninterrupted, key)), load(getattr(resumed, key))
        assert set(a) == set(b) and all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a), key

    # The pair of files (SD: `lora_te_` keys, `emb_params`) in a fresh pipeline gives the trained one's images.
    fresh = copy.deepcopy(sd)
    fresh.load_textual_inversion(load(resumed.embedding)["emb_params"], token="<shp>",
                                 text_encoder=fresh.text_encoder, tokenizer=fresh.tokenizer)
    fresh.load_lora_weights(load(resumed.lora), adapter_name="shapes")
    te_layers = sum(1 for k in load(resumed.lora) if k.startswith("lora_te_text_model_encoder_layers_")
                    and k.endswith(".lora_down.weight"))
    assert te_layers == 20 and "shapes" in fresh.text_encoder.peft_config and "shapes" in fresh.unet.peft_config
    assert np.allclose(image(fresh, "<shp>, a red circle"), image(trained, "<shp>, a red circle"), atol=1e-4)


def test_a_checkpoint_of_other_settings_is_refused(sd):
    hooks = Recorder()
    train(copy.deepcopy(sd), FAMILIES["sd"], examples(1), TrainConfig(steps=2, resolution=64, rank=2,
                                                                       checkpoint_every=1), hooks=hooks)
    with pytest.raises(ValueError, match=r"^resume: the checkpoint was trained with other settings \(rank\)"):
        train(copy.deepcopy(sd), FAMILIES["sd"], examples(1), TrainConfig(steps=3, resolution=64, rank=4),
              resume=hooks.checkpoints[1])


def test_v_prediction_models_train(sd):
    pipe = tiny_sd(scheduler={"prediction_type": "v_prediction"})
    result = train(pipe, FAMILIES["sd"], examples(1), TrainConfig(steps=3, resolution=64, rank=2,
                                                                   min_snr_gamma=5.0, checkpoint_every=0))
    assert len(result.losses) == 3 and all(math.isfinite(v) for v in result.losses)
