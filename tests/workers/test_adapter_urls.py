"""LoRAs given by URL (`loras: [{"url": ..., "scale": ...}]`), fetched by the worker: through the same guard
as input images (service/fetch.py), safetensors only (a pickle suffix refused before any request, pickle
bytes refused unread), a size cap, a disk cache by content digest with a byte budget and least recently
used eviction, and a URL -> digest index that outlives the process. The server is a local one on
127.0.0.2, which these tests allow explicitly (as tests/service/api/test_image_urls.py does); nothing is
sent off this machine. After every refusal the worker still runs a plain job."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import uuid
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from service import lora_urls
from service.catalog import AdapterSpec, tiny_catalog
from service.jobs import protocol
from tests.local_server import ADDRESS as ALLOWED
from tests.local_server import local_server
from tests.workers.harness import image, job, make_runner, pop_and_run, submit, turbo
from workers import metrics, tiny_adapters
from workers.adapter_files import AdapterFiles, index_key

TASK, MODEL = "turbo", "tiny-turbo"


def lora_bytes(seed: int) -> bytes:
    return safetensors.torch.save(tiny_adapters.lora(seed))


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---- a local server that counts the requests of each path (tests/local_server.py)


@pytest.fixture(scope="module")
def server():
    with local_server() as srv:
        yield srv


# ---- one worker for the module; each test gets its own adapter cache


@pytest.fixture(scope="module")
def named_file(tmp_path_factory) -> Path:
    """The bytes served as /good.safetensors, also a named adapter `a` of the models file."""
    path = tmp_path_factory.mktemp("named") / "a.safetensors"
    path.write_bytes(lora_bytes(301))
    return path


@pytest.fixture(scope="module")
def runner(module_server, tmp_path_factory, named_file):
    catalog = tiny_catalog()
    catalog.adapters["a"] = AdapterSpec(name="a", kind="lora", source=str(named_file), base=["sdxl"])
    data = tmp_path_factory.mktemp("adapter-url-data")
    return make_runner(module_server.url, data, "adapter-url-worker", catalog, allow_adapter_urls=True,
                       image_url_schemes=["http", "https"], image_url_allow_networks=[f"{ALLOWED}/32"],
                       adapter_url_timeout_s=10.0, adapter_cache_dir=data / "module-cache")


@pytest.fixture
def redis(module_redis, runner):
    yield module_redis


@pytest.fixture
def use_files(runner, tmp_path, monkeypatch):
    """Give the model's LoRAs a fresh AdapterFiles (what a restarted worker has) with settings changed;
    its cache is this test's own directory unless `adapter_cache_dir` says otherwise."""
    loras = runner.runtime.models[MODEL].loras

    def make(**overrides) -> AdapterFiles:
        settings = runner.settings.model_copy(update={"adapter_cache_dir": tmp_path / "cache", **overrides})
        files = AdapterFiles(settings)
        monkeypatch.setattr(loras, "files", files)
        return files

    return make


def run(runner, redis, loras=(), seed=7) -> str:
    job_id = submit(redis, TASK, MODEL, {**turbo(seed, prompt="a fox"), "loras": [dict(e) for e in loras]})
    pop_and_run(runner, redis, TASK, MODEL)
    return job_id


def pixels(runner, redis, loras=(), seed=7) -> np.ndarray:
    job_id = run(runner, redis, loras, seed)
    assert job(redis, job_id)["status"] == "succeeded", job(redis, job_id)
    return image(runner.storage, job_id)


def url_lora(url: str, scale: float = 1.0) -> dict:
    return {"url": url, "scale": scale}


def failure(runner, redis, url: str) -> str:
    """Run a job with the LoRA at `url`, which must fail as invalid input; its message."""
    record = job(redis, run(runner, redis, [url_lora(url)]))
    assert record["status"] == "failed", record
    assert record["error"]["code"] == "invalid_input", record["error"]
    return record["error"]["message"]


def still_works(runner, redis, base: np.ndarray) -> None:
    """After a refusal: a plain job runs, with the base model's exact pixels (no LoRA left on)."""
    assert np.array_equal(pixels(runner, redis), base)


def cached_files(root: Path) -> list[str]:
    """Everything in the cache directory but its index."""
    return sorted(p.name for p in root.glob("*") if p.name != "urls.json") if root.exists() else []


def disk_hits() -> float:
    return metrics.ADAPTER_CACHE.labels("disk", "hit")._value.get()


# ---- 1. fetched once, then from the disk cache


def test_a_url_lora_is_fetched_once_then_read_from_the_cache(runner, redis, server, use_files, named_file):
    files = use_files()
    data = named_file.read_bytes()
    url = server.serve("/good.safetensors", data)
    base = pixels(runner, redis)
    hits = disk_hits()

    job_id = run(runner, redis, [url_lora(url)])
    record = job(redis, job_id)
    assert record["status"] == "succeeded", record
    with_lora = image(runner.storage, job_id)
    assert not np.array_equal(with_lora, base)
    assert record["params"]["loras"] == [{"url": url, "scale": 1.0, "digest": digest_of(data)}]

    for seed in (7, 8):
        job_id = run(runner, redis, [url_lora(url)], seed=seed)
        assert job(redis, job_id)["status"] == "succeeded"
        assert job(redis, job_id)["params"]["loras"][0]["digest"] == digest_of(data)
    assert np.array_equal(image(runner.storage, run(runner, redis, [url_lora(url)])), with_lora)
    assert server.hits("/good.safetensors") == 1  # four jobs, one request
    assert disk_hits() - hits == 0  # resident after the first job: the file is not even read again

    # In the cache: the file under its digest, byte for byte, and the URL in the index.
    root = files.cache.root
    assert cached_files(root) == [digest_of(data).removeprefix("sha256:") + ".safetensors"]
    assert (root / cached_files(root)[0]).read_bytes() == data
    assert json.loads((root / "urls.json").read_text()) == {index_key(url): digest_of(data)}

    # The same bytes as a named adapter: the same LoRA, the same pixels.
    assert np.array_equal(pixels(runner, redis, [{"name": "a", "scale": 1.0}]), with_lora)
    still_works(runner, redis, base)


# ---- 2. the URL -> digest index outlives the worker


def test_the_url_index_survives_a_restart(runner, redis, server, use_files, tmp_path):
    cache = tmp_path / "shared-cache"
    data = lora_bytes(302)
    url = server.serve("/restart.safetensors", data)
    use_files(adapter_cache_dir=cache)
    first = pixels(runner, redis, [url_lora(url)])
    assert server.hits("/restart.safetensors") == 1

    restarted = use_files(adapter_cache_dir=cache)  # a new AdapterFiles: nothing in memory...
    loras = runner.runtime.models[MODEL].loras
    while loras._evict(set()):  # ...and no LoRA resident, as in a restarted worker
        pass
    assert restarted.cache.lookup(url) == cache / (digest_of(data).removeprefix("sha256:") + ".safetensors")
    hits = disk_hits()
    job_id = run(runner, redis, [url_lora(url)])
    assert job(redis, job_id)["status"] == "succeeded", job(redis, job_id)
    assert job(redis, job_id)["params"]["loras"][0]["digest"] == digest_of(data)
    assert np.array_equal(image(runner.storage, job_id), first)
    assert server.hits("/restart.safetensors") == 1  # not fetched again
    assert disk_hits() - hits == 1


# ---- 2b. a URL's query (its token) is needed to fetch, and shown nowhere


def test_a_url_token_fetches_but_stays_out_of_params_and_the_index(runner, redis, server, use_files, tmp_path):
    token = "t0ken-of-the-lora-4b1d"
    data = lora_bytes(305)
    url = server.serve(f"/private.safetensors?token={token}", data)  # without the token: a 404
    files = use_files()
    record = job(redis, run(runner, redis, [url_lora(url)]))
    assert record["status"] == "succeeded", record
    assert record["params"]["loras"] == [{"url": url.split("?")[0], "scale": 1.0, "digest": digest_of(data)}]
    index = (files.cache.root / "urls.json").read_text()
    assert token not in index and "private.safetensors" not in index  # keyed by the URL's digest
    assert files.cache.lookup(url) is not None and files.cache.lookup(url.split("?")[0]) is None

    # An index an older worker wrote, by URL: read without those entries, and rewritten without them.
    cache = tmp_path / "old-cache"
    cache.mkdir()
    (cache / "urls.json").write_text(json.dumps({url: digest_of(data), "url-sha256:ab": digest_of(data)}))
    old = use_files(adapter_cache_dir=cache)
    assert old.cache.lookup(url) is None
    assert json.loads((cache / "urls.json").read_text()) == {"url-sha256:ab": digest_of(data)}


def test_the_worker_fetches_with_the_query_the_api_kept_apart(runner, redis, server, use_files):
    """As POST /generate submits it: `params` shows the URL without its query, the record keeps the full
    one apart (service/lora_urls.py), and the worker fetches with it (a batched or chained job alike)."""
    token = "t0ken-kept-apart-9c2e"
    data = lora_bytes(306)
    url = server.serve(f"/apart.safetensors?token={token}", data)  # without the token: a 404
    use_files()
    params, full = lora_urls.split({**turbo(7, prompt="a fox"), "loras": [url_lora(url)]})
    assert token not in json.dumps(params)
    job_id = str(uuid.uuid4())
    assert protocol.submit(job_id, TASK, MODEL, params, owner=None, retries=0, timeout_s=600, cap=0,
                           adapter_urls=full).run(redis)
    assert protocol.load_input(redis, job_id)[0]["loras"][0]["url"] == url
    assert protocol.peek(redis, TASK, MODEL, 10) == [(job_id, {**params, "loras": [url_lora(url)]})]
    pop_and_run(runner, redis, TASK, MODEL)
    record = job(redis, job_id)
    assert record["status"] == "succeeded", record
    assert server.hits(f"/apart.safetensors?token={token}") == 1
    assert record["params"]["loras"] == [{"url": url.split("?")[0], "scale": 1.0, "digest": digest_of(data)}]


# ---- 3. never a pickle


@pytest.mark.parametrize("suffix", [".ckpt", ".bin", ".pt", ".PTH"])
def test_a_pickle_suffix_is_refused_before_any_request(runner, redis, server, use_files, suffix):
    files = use_files()
    path = f"/weights{suffix}"
    url = server.serve(path, lora_bytes(303))  # a valid file even: the name alone is refused
    base = pixels(runner, redis)
    message = failure(runner, redis, url)
    assert "pickle" in message and url not in message
    assert server.hits(path) == 0
    assert cached_files(files.cache.root) == []
    still_works(runner, redis, base)


class Armed:
    """Unpickling this touches `marker`: proof that a pickle ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def armed_bytes(kind: str, marker: Path) -> bytes:
    if kind == "pickle":
        return pickle.dumps({"unet.down.lora_A.weight": Armed(marker)})
    buf = io.BytesIO()
    torch.save({"unet.down.lora_A.weight": torch.zeros(2, 2), "armed": Armed(marker)}, buf)
    return buf.getvalue()


def unpickle(kind: str, data: bytes) -> None:
    if kind == "pickle":
        pickle.loads(data)
    else:
        torch.load(io.BytesIO(data), weights_only=False)


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_pickle_bytes_under_a_neutral_name_are_refused_unread(runner, redis, server, use_files, tmp_path, kind):
    # The bytes are armed: loading them (as the test does here, with another marker) runs code.
    proof = tmp_path / "proof"
    unpickle(kind, armed_bytes(kind, proof))
    assert proof.exists()

    files = use_files()
    marker = tmp_path / "ran"
    path = f"/blob-{kind}"
    server.serve(path, armed_bytes(kind, marker))
    base = pixels(runner, redis)
    message = failure(runner, redis, server.base + path)
    assert "is not a safetensors file" in message
    assert server.hits(path) == 1
    assert not marker.exists()  # nothing was unpickled
    assert cached_files(files.cache.root) == []
    still_works(runner, redis, base)


# ---- 4. a size cap


@pytest.mark.parametrize("kind", ["file", "stream"])  # with a Content-Length, and without one
def test_an_oversized_file_is_refused_and_nothing_is_kept(runner, redis, server, use_files, kind):
    data = lora_bytes(304)
    cap = 50_000
    assert len(data) > cap
    files = use_files(max_adapter_bytes=cap)
    path = f"/big-{kind}.safetensors"
    url = server.serve(path, data, stream=kind == "stream")
    base = pixels(runner, redis)
    message = failure(runner, redis, url)
    assert f"larger than {cap} bytes" in message
    assert server.hits(path) == 1
    assert cached_files(files.cache.root) == []  # no partial file
    assert files.cache.lookup(url) is None
    still_works(runner, redis, base)

    use_files(max_adapter_bytes=len(data))  # exactly the cap: fine
    assert not np.array_equal(pixels(runner, redis, [url_lora(url)]), base)


# ---- 5. public addresses only (here: the allowed test address), on every redirect


def test_a_non_allowed_address_is_refused_directly_and_after_a_redirect(runner, redis, server, use_files):
    files = use_files()
    data = lora_bytes(305)
    server.serve("/target.safetensors", data)
    loopback = f"http://127.0.0.1:{server.port}/target.safetensors"
    base = pixels(runner, redis)
    for url in (server.redirect("/to-loopback", loopback),
                server.redirect("/to-localhost", f"http://localhost:{server.port}/target.safetensors"),
                loopback, f"http://10.0.0.1:{server.port}/target.safetensors"):
        assert "public address" in failure(runner, redis, url)
    assert server.hits("/to-loopback") == 1 and server.hits("/to-localhost") == 1
    assert server.hits("/target.safetensors") == 0
    assert cached_files(files.cache.root) == []
    still_works(runner, redis, base)

    # A redirect to an allowed address is followed; the cache knows the URL the job gave.
    url = server.redirect("/to-target", f"{server.base}/target.safetensors")
    job_id = run(runner, redis, [url_lora(url)])
    assert job(redis, job_id)["status"] == "succeeded", job(redis, job_id)
    assert job(redis, job_id)["params"]["loras"][0]["digest"] == digest_of(data)
    assert server.hits("/target.safetensors") == 1


def test_with_no_allowed_networks_the_test_server_is_refused(runner, redis, server, use_files):
    use_files(image_url_allow_networks=[])
    url = server.serve("/private.safetensors", lora_bytes(306))
    base = pixels(runner, redis)
    assert "public address" in failure(runner, redis, url)
    assert server.hits("/private.safetensors") == 0
    still_works(runner, redis, base)


# ---- 6. the cache's byte budget: least recently used files leave


def test_least_recently_used_files_leave_the_cache(runner, redis, server, use_files):
    blobs = {name: lora_bytes(310 + i) for i, name in enumerate(("u1", "u2", "u3"))}
    size = len(blobs["u1"])
    assert all(len(b) == size for b in blobs.values())
    files = use_files(adapter_cache_bytes=int(size * 2.5))  # room for two
    root = files.cache.root
    urls = {name: server.serve(f"/lru-{name}.safetensors", data) for name, data in blobs.items()}

    def use(name):
        return pixels(runner, redis, [url_lora(urls[name])])

    def present():
        names = {digest_of(data).removeprefix("sha256:") + ".safetensors": n for n, data in blobs.items()}
        return sorted(names[f] for f in cached_files(root))

    use("u1"), use("u2")
    assert present() == ["u1", "u2"]
    u1 = use("u1")  # from the cache, and now the most recently used
    use("u3")  # over the budget: u2, the least recently used, leaves
    assert present() == ["u1", "u3"]
    assert files.cache.size() <= int(size * 2.5)
    assert index_key(urls["u2"]) not in json.loads((root / "urls.json").read_text())
    assert [server.hits(f"/lru-{n}.safetensors") for n in ("u1", "u2", "u3")] == [1, 1, 1]

    use("u2")  # fetched again; u1 is now the least recently used
    assert present() == ["u2", "u3"]
    use("u3")
    assert [server.hits(f"/lru-{n}.safetensors") for n in ("u1", "u2", "u3")] == [1, 2, 1]
    assert np.array_equal(use("u1"), u1)  # refetched, the same LoRA
    assert server.hits("/lru-u1.safetensors") == 2


# ---- 7. a safetensors file that is no LoRA for the model


def test_a_safetensors_file_that_is_no_lora_fails_the_job(runner, redis, server, use_files):
    use_files()
    loras = runner.runtime.models[MODEL].loras
    url = server.serve("/foo.safetensors", safetensors.torch.save({"foo.weight": torch.zeros(3)}))
    base = pixels(runner, redis)
    resident = dict(loras.resident)
    message = failure(runner, redis, url)
    assert "is not a LoRA for model tiny-turbo" in message
    assert set(loras.resident) <= set(resident)  # nothing new resident (a full worker made room first)
    names = {r.name for r in resident.values()}
    assert not any(name not in names for adapters in loras.pipe.get_list_adapters().values() for name in adapters)
    still_works(runner, redis, base)
    good = server.serve("/after-foo.safetensors", lora_bytes(320))
    assert not np.array_equal(pixels(runner, redis, [url_lora(good)]), base)  # and URL LoRAs still work
