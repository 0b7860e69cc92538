"""`check` (the config against a pipeline's tokenizers, before any work) and the data preparation that
needs no model: buckets, fitting images to them, captions, the batch order."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.workers.training.common import shape_image
from workers.families.sd import tiny_pai, tiny_sd
from workers.training import TrainConfig, check
from workers.training.data import BucketBatches, LatentSet, bucket_sizes, compose_caption, expand_tokens, fit


@pytest.fixture(scope="module")
def pai():
    return tiny_pai()


@pytest.fixture(scope="module")
def sd():
    return tiny_sd()


def embedding(**kw) -> TrainConfig:
    return TrainConfig(**{"method": "embedding", "token": "<小奶猫>", "init_token": "猫", **kw})


def test_a_valid_embedding_config_passes_and_changes_no_tokenizer(pai, sd):
    size = len(pai.tokenizer)
    check(embedding(), pai)
    check(TrainConfig(method="lora+embedding", token="<shp>", init_token="s"), sd)
    assert len(pai.tokenizer) == size and "<shp>" not in sd.tokenizer.get_vocab()  # tried on copies only


def test_a_token_already_in_the_vocabulary_is_refused_naming_token(pai, sd):
    with pytest.raises(ValueError, match=r"^token: '猫' is already in the vocabulary"):
        check(embedding(token="猫", init_token=None), pai)
    with pytest.raises(ValueError, match=r"^token: 'a' is already in the vocabulary"):
        check(TrainConfig(method="embedding", token="a"), sd)
    with pytest.raises(ValueError, match=r"`trigger`"):  # the API's name for it is in the message
        check(embedding(token="猫"), pai)


def test_an_init_token_of_several_tokens_is_refused_naming_init_token(pai, sd):
    with pytest.raises(ValueError, match=r"^init_token: '猫咪' is 2 tokens"):
        check(embedding(init_token="猫咪"), pai)
    with pytest.raises(ValueError, match=r"^init_token: 'cat' is 3 tokens"):  # the tiny CLIP vocabulary: bytes
        check(TrainConfig(method="embedding", token="<cat>", init_token="cat"), sd)
    with pytest.raises(ValueError, match=r"^init_token: .*unknown token"):
        check(embedding(init_token="😺"), pai)


@pytest.mark.parametrize("token, message", [(None, r"^token: method 'embedding' trains a new token"),
                                            ("", r"^token: method 'embedding' trains a new token"),
                                            ("<small cat>", r"^token: .* white space")])
def test_a_missing_or_split_token_is_refused(pai, token, message):
    with pytest.raises(ValueError, match=message):
        check(embedding(token=token), pai)


def test_multi_vector_tokens_need_a_token_the_tokenizer_keeps_as_written(pai, sd):
    # BERT spaces CJK characters: diffusers would never expand "<小奶猫>" into its vectors at inference.
    with pytest.raises(ValueError, match=r"^vectors: 2 vectors need a token"):
        check(embedding(vectors=2), pai)
    check(TrainConfig(method="embedding", token="<cat>", init_token="c", vectors=2), sd)


@pytest.mark.parametrize("field, value", [("method", "dreambooth"), ("resolution", 100), ("steps", 0),
                                          ("caption_dropout", 1.0), ("mixed_precision", "fp8"), ("rank", 0),
                                          ("learning_rate", 0.0), ("validation_prompt", " ")])
def test_bad_numbers_and_names_are_refused_naming_the_field(sd, field, value):
    with pytest.raises(ValueError, match=rf"^{field}: "):
        check(TrainConfig(**{field: value}), sd)


def test_a_lora_config_takes_no_token(sd):
    with pytest.raises(ValueError, match=r"^token: method 'lora' trains no embedding"):
        check(TrainConfig(token="<x>"), sd)


def test_buckets_keep_the_area_in_multiples_of_64():
    sizes = bucket_sizes(512)
    assert (512, 512) in sizes and (1024, 256) in sizes and (256, 1024) in sizes
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 and min(w, h) >= 256 for w, h in sizes)
    assert bucket_sizes(64) == [(64, 64)]


def test_images_go_to_the_bucket_of_the_nearest_aspect_ratio_cropped_centrally():
    wide = fit(shape_image((200, 0, 0), "square", (300, 150)), 512, buckets=True)
    assert wide.size == (320, 704) and wide.pixels.shape == (3, 320, 704)  # 2.2: the nearest to 2:1
    assert wide.original == (150, 300) and wide.crop == (16, 0)  # scaled to 704×352 to cover it: 16 cut on top
    assert wide.pixels.min() >= -1 and wide.pixels.max() <= 1
    assert wide.time_ids.tolist() == [150, 300, 16, 0, 320, 704]
    square = fit(shape_image((200, 0, 0), "square", (300, 150)), 128, buckets=False)
    assert square.size == (128, 128) and square.crop == (0, 64)  # resized to 256×128, the middle kept


def test_captions_get_the_trigger_first_and_multi_vector_tokens_written_out():
    assert compose_caption("a red circle", "shp") == "shp, a red circle"
    assert compose_caption("", "shp") == "shp" and compose_caption("a shp circle", "shp") == "a shp circle"
    assert compose_caption("a red circle", "") == "a red circle"
    assert expand_tokens("<cat>, a cat", ["<cat>", "<cat>_1"]) == "<cat> <cat>_1, a cat"
    assert expand_tokens("<cat>, a cat", ["<cat>"]) == "<cat>, a cat"


def test_batches_are_full_of_one_bucket_in_an_order_fixed_by_seed_and_epoch():
    latents = [torch.zeros(4, 8, 8)] * 3 + [torch.zeros(4, 8, 16)] * 2
    data = LatentSet(latents, [0] * 5, [torch.zeros(6)] * 5)
    sampler = BucketBatches(data, batch_size=2, seed=3)
    first = list(sampler)
    assert len(first) == len(sampler) == 3
    assert all(len(b) == 2 and len({data.size_of(i) for i in b}) == 1 for b in first)
    assert {i for b in first for i in b} == {0, 1, 2, 3, 4}  # every image appears (one of 3 twice)
    again = copy.copy(sampler)
    assert list(again) == first
    sampler.epoch = 1
    orders = {tuple(map(tuple, list(sampler)))}
    sampler.epoch = 2
    orders.add(tuple(map(tuple, list(sampler))))
    assert len(orders | {tuple(map(tuple, first))}) > 1


def test_a_token_without_init_token_starts_from_a_seeded_vector_of_the_usual_norm(sd):
    from workers.training.config import text_encoders
    from workers.training.embedding import add_tokens

    starts = []
    for _ in range(2):
        pipe = copy.deepcopy(sd)
        encoders = text_encoders(pipe)
        rows = add_tokens(["<new>", "<new>_1"], None, encoders, seed=5)["text_encoder"]
        assert pipe.tokenizer.tokenize("a <new> <new>_1") == ["a</w>", "<new>", "<new>_1"]
        starts.append(rows.rows.detach().clone())
    typical = sd.text_encoder.get_input_embeddings().weight.norm(dim=1).mean()
    assert torch.equal(starts[0], starts[1]) and torch.equal(starts[0][0], starts[0][1])
    assert torch.allclose(starts[0][0].norm(), typical, rtol=1e-4)
