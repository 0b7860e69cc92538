"""Hypothesis over request bodies: whatever arrives, the answer is one of the contract's 2xx/4xx,
never a 5xx, never a traceback, never the input echoed back."""

from __future__ import annotations

import json

import hypothesis
import hypothesis.strategies as st
import pytest

from tests.conftest import png_data_url

ALLOWED = {202, 400, 413, 415, 422}
FIELDS = ["task", "prompt", "negative_prompt", "width", "height", "steps", "guidance_scale", "num_images",
          "refiner", "refiner_switch", "scheduler", "seed", "model", "image", "strength", "num_frames", "fps",
          "motion_bucket_id", "noise_aug_strength", "min_guidance_scale", "max_guidance_scale",
          "decode_chunk_size", "output_format", "retries"]
IMG = png_data_url(64, 64)

odd_text = st.text(alphabet=st.characters(codec=None, categories=None), max_size=40) | st.sampled_from(
    ["\x00", "\ud800", "\udfff", "a\ud83d", "\u202e", "\ufeff", "𝕏" * 30, "💥" * 10, "", " " * 5, "x" * 2001])
scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | odd_text
           | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1e308 * 10, -0.0, 1e-320]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(odd_text, inner, max_size=3),
                      max_leaves=6)
BASES = [
    {"task": "sdxl", "prompt": "a lighthouse"},
    {"task": "turbo", "prompt": "a fox"},
    {"task": "img2img", "prompt": "x", "image": IMG},
    {"task": "svd", "image": IMG},
]


@st.composite
def mutated_bodies(draw):
    body = dict(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 4))):
        key = draw(st.sampled_from(FIELDS) | odd_text)
        if draw(st.booleans()) and key in body:
            del body[key]
        else:
            body[key] = draw(values)
    return body


def encode(body) -> bytes:
    # allow_nan emits NaN/Infinity tokens; lone surrogates become \\udXXX escapes: both are what
    # hostile clients send, and Python's own JSON parser accepts them.
    return json.dumps(body, allow_nan=True).encode()


def check(api, raw: bytes):
    r = api.post("/generate", content=raw, headers={"content-type": "application/json"})
    assert r.status_code in ALLOWED, (r.status_code, r.text[:300])
    body = r.json()
    if r.status_code != 202:
        assert set(body) == {"error", "request_id"} and "Traceback" not in r.text
    else:
        api.delete(f"/jobs/{body['id']}")


SETTINGS = dict(deadline=None, database=None, suppress_health_check=list(hypothesis.HealthCheck))


@hypothesis.settings(max_examples=300, **SETTINGS)
@hypothesis.given(body=mutated_bodies())
def test_mutated_valid_bodies_never_5xx(api, body):
    check(api, encode(body))


@hypothesis.settings(max_examples=150, **SETTINGS)
@hypothesis.given(body=values)
def test_any_json_value_never_5xx(api, body):
    check(api, encode(body))


@hypothesis.settings(max_examples=150, **SETTINGS)
@hypothesis.given(raw=st.binary(max_size=200))
def test_any_bytes_never_5xx(api, raw):
    check(api, raw)


@pytest.mark.parametrize("raw", [
    b"[" * 50_000, b'{"a":' * 50_000, b'{"task": "sdxl", "prompt": "x", "width": 1' + b"0" * 5000 + b"}",
    b'{"task": "sdxl", "prompt": "x", "seed": -1e999}', b"\xef\xbb\xbf{}", b"null", b"",
])
def test_pathological_bodies(api, raw):
    check(api, raw)
