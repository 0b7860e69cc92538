"""Adapter files refused by the worker: a safetensors header nested too deep or naming too many tensors
fails the job as `invalid_input` (never `internal`), and a fetched file that is refused, whatever the
reason, never enters the adapter disk cache, so it never evicts a good one. The LoRAs come by URL from
a local server on 127.0.0.2, which these tests allow explicitly (as tests/workers/test_adapter_urls.py
does)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import safetensors.torch
import torch

from service.catalog import tiny_catalog
from tests.local_server import ADDRESS as ALLOWED
from tests.local_server import local_server
from tests.workers.harness import image, job, make_runner, pop_and_run, submit, turbo
from workers import tiny_adapters
from workers.adapter_files import MAX_TENSORS

TASK, MODEL = "turbo", "tiny-turbo"


@pytest.fixture(scope="module")
def server():
    with local_server() as srv:
        yield srv


@pytest.fixture(scope="module")
def good() -> bytes:
    return safetensors.torch.save(tiny_adapters.lora(401))


@pytest.fixture(scope="module")
def runner(module_server, tmp_path_factory, good):
    data = tmp_path_factory.mktemp("adapter-refusal-data")
    return make_runner(module_server.url, data, "adapter-refusal-worker", tiny_catalog(), allow_adapter_urls=True,
                       image_url_schemes=["http", "https"], image_url_allow_networks=[f"{ALLOWED}/32"],
                       adapter_url_timeout_s=10.0, adapter_cache_dir=data / "cache",
                       adapter_cache_bytes=int(len(good) * 1.5))  # room for one file of its size


def run(runner, redis, loras=()) -> dict:
    job_id = submit(redis, TASK, MODEL, {**turbo(7, prompt="a fox"), "loras": [dict(e) for e in loras]})
    pop_and_run(runner, redis, TASK, MODEL)
    return {**job(redis, job_id), "id": job_id}


def header_file(text: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(text)) + text + data


def refused(runner, redis, url: str) -> str:
    record = run(runner, redis, [{"url": url, "scale": 1.0}])
    assert record["status"] == "failed" and record["error"]["code"] == "invalid_input", record
    return record["error"]["message"]


def test_a_refused_file_never_enters_the_cache_nor_evicts_a_good_one(runner, module_redis, server, good):
    files = runner.runtime.models[MODEL].loras.files
    root = files.cache.root
    good_url = server.serve("/good.safetensors", good)
    record = run(runner, module_redis, [{"url": good_url, "scale": 1.0}])
    assert record["status"] == "succeeded", record
    with_good = image(runner.storage, record["id"])
    cached = sorted(p.name for p in root.glob("*.safetensors"))
    assert len(cached) == 1

    # Files the worker refuses after fetching them, each as large as the good one: under the old order
    # (cached on fetch) each would have evicted it.
    size = len(good)
    not_a_lora = safetensors.torch.save({"foo.weight": torch.zeros(size // 4)})
    dora = {**tiny_adapters.lora(402), "unet.x.lora_magnitude_vector": torch.zeros(size // 4)}
    other_family = tiny_adapters.lora(403, family="sd3", std=1.0)
    other_family["transformer.pad"] = torch.zeros(size // 4)
    nested = header_file(b'{"a":' * 15_000 + b"1" + b"}" * 15_000, bytes(size))
    count = MAX_TENSORS + 10
    entry = b'"t%d":{"dtype":"F32","shape":[1],"data_offsets":[%d,%d]}'
    entries = (entry % (i, 4 * i, 4 * i + 4) for i in range(count))
    many = header_file(b"{" + b",".join(entries) + b"}", bytes(4 * count))
    bad = {"not-a-lora": (not_a_lora, "is not a LoRA for model tiny-turbo"),
           "dora": (safetensors.torch.save(dora), "is a DoRA"),
           "other-family": (safetensors.torch.save(other_family), "is a LoRA for sd3 models"),
           "nested": (nested, "is not a safetensors file (its header is not JSON)"),
           "many": (many, f"holds more than {MAX_TENSORS} tensors")}
    for name, (data, words) in bad.items():
        url = server.serve(f"/{name}.safetensors", data)
        assert words in refused(runner, module_redis, url), name
        assert files.cache.lookup(url) is None, name
        assert sorted(p.name for p in root.glob("*")) == sorted([*cached, "urls.json"]), name

    index = json.loads((root / "urls.json").read_text())
    assert list(index.values()) == ["sha256:" + cached[0].removesuffix(".safetensors")]
    record = run(runner, module_redis, [{"url": good_url, "scale": 1.0}])  # from the cache, not fetched again
    assert np.array_equal(image(runner.storage, record["id"]), with_good)
    assert server.hits("/good.safetensors") == 1
