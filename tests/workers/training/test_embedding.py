"""Textual inversion on the tiny PAI pipeline (Chinese BERT tokenizer, token "<小奶猫>" from "猫") and on
tiny SDXL (two encoders, two vectors): only the new rows train, and the A1111-layout file loads into a
fresh pipeline with diffusers' `load_textual_inversion` (as workers/embeddings.py loads it), giving the
trained pipeline's images."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from safetensors.torch import load

from tests.workers.training.common import examples, image
from workers.families import FAMILIES
from workers.families.sd import tiny_pai
from workers.families.sdxl import tiny_base
from workers.training import TrainConfig, train

CAPTIONS = ["一只红色的圆", "一个蓝色的方块"]


@pytest.fixture(scope="module")
def pai():
    return tiny_pai()


@pytest.fixture(scope="module")
def sdxl():
    return tiny_base()


def test_a_chinese_token_trains_alone_and_loads_as_an_a1111_embedding(pai):
    pipe = copy.deepcopy(pai)
    config = TrainConfig(method="embedding", token="<小奶猫>", init_token="猫", steps=15, learning_rate=5e-2,
                         resolution=64, caption_dropout=0.0, checkpoint_every=0)
    result = train(pipe, FAMILIES["sd"], examples(2, CAPTIONS), config)
    assert result.lora is None and len(result.losses) == 15

    state = load(result.embedding)
    assert set(state) == {"emb_params"} and state["emb_params"].shape == (1, 32)
    start = pai.text_encoder.get_input_embeddings().weight[pai.tokenizer.convert_tokens_to_ids("猫")]
    assert (state["emb_params"][0] - start).abs().max() > 1e-2  # it moved from 猫's vector

    # Only the new row trained: every other row of the trained pipeline's matrix is the base model's.
    token_id = pipe.tokenizer.convert_tokens_to_ids("<小奶猫>")
    weight = pipe.text_encoder.get_input_embeddings().weight
    base = pai.text_encoder.get_input_embeddings().weight
    assert token_id == len(pai.tokenizer) and torch.equal(weight[:token_id], base[:token_id])
    assert torch.equal(weight[token_id], state["emb_params"][0])
    assert all(not p.requires_grad for p in pipe.text_encoder.parameters())

    fresh = copy.deepcopy(pai)
    fresh.load_textual_inversion(state["emb_params"], token="<小奶猫>", text_encoder=fresh.text_encoder,
                                 tokenizer=fresh.tokenizer)
    with_token = image(fresh, "一只<小奶猫>")
    assert np.allclose(with_token, image(pipe, "一只<小奶猫>"), atol=1e-5)
    assert np.abs(with_token - image(fresh, "一只猫")).max() > 1e-3


def test_a_sdxl_embedding_exports_clip_l_and_clip_g_and_loads_into_both_encoders(sdxl):
    pipe = copy.deepcopy(sdxl)
    config = TrainConfig(method="embedding", token="<cat>", init_token="c", vectors=2, steps=8,
                         learning_rate=5e-2, resolution=64, caption_dropout=0.0, checkpoint_every=0)
    result = train(pipe, FAMILIES["sdxl"], examples(2), config)
    state = load(result.embedding)
    assert set(state) == {"clip_l", "clip_g"}
    assert state["clip_l"].shape == state["clip_g"].shape == (2, 32)
    for key, encoder in (("clip_l", sdxl.text_encoder), ("clip_g", sdxl.text_encoder_2)):
        start = encoder.get_input_embeddings().weight[sdxl.tokenizer.convert_tokens_to_ids("c</w>")]
        assert (state[key] - start).abs().max() > 1e-2, key

    fresh = copy.deepcopy(sdxl)
    for te in FAMILIES["sdxl"].text_encoders:  # as workers/embeddings.py loads one
        fresh.load_textual_inversion(state[te.embedding_key], token="<cat>", text_encoder=getattr(fresh, te.encoder),
                                     tokenizer=getattr(fresh, te.tokenizer))
    assert fresh.tokenizer.convert_tokens_to_ids("<cat>_1") == pipe.tokenizer.convert_tokens_to_ids("<cat>_1")
    with_token = image(fresh, "a <cat>")
    assert np.allclose(with_token, image(pipe, "a <cat>"), atol=1e-5)
    assert np.abs(with_token - image(copy.deepcopy(sdxl), "a <cat>")).max() > 1e-3
