"""The GPU memory figures the deployment docs give (deploy/README.md §3, the comments of
deploy/compose/models.yaml and deploy/k8s/workers.yaml) against the architectures themselves: each
example model is built on the `meta` device (no memory, no weights) from the full-size configs
bench/gpu.py uses, and its parameters counted once each (the refiner shares the base's VAE and bigG
encoder, as workers/models.py loads it). Resident weights in a 2-byte dtype are parameters × 2 bytes,
in GiB. Peaks are estimates, so only their consistency with the weights is checked."""

from __future__ import annotations

import json
import re

import pytest
import torch
import yaml

from service.catalog import load_catalog
from service.catalog.models import BUILTIN_UPSCALER
from service.families import KINDS
from service.settings import Settings
from tests.conftest import ROOT
from tests.deploy.conftest import COMPOSE_MODELS, DEPLOY, commented_models

README = DEPLOY / "README.md"
CONFIGS = ROOT / "bench" / "configs" / "full_size.json"
# The published architecture behind each example source (a hub id): the model kind whose family file
# builds it (workers/families/<family>.py `full_size`, on the meta device). An SDXL base with its refiner
# counts the refiner too (it shares the base's VAE and bigG encoder, as workers/models.py loads it).
SOURCES = {
    "stabilityai/stable-diffusion-xl-base-1.0": "sdxl",
    "stabilityai/sdxl-turbo": "turbo",
    "stabilityai/stable-video-diffusion-img2vid-xt": "svd",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd",
}
GiB = 2**30
# The one published peak the estimates lean on: SDXL base alone, 1024², one image, 30 steps, bf16 +
# SDPA: 8.96 GiB (torch.cuda.max_memory_allocated, A100), i.e. this much above its weights.
SDXL_1024_ACTIVATIONS_GIB = 8.96 - 6.46


def architecture(spec: dict) -> tuple[str, bool]:
    """(family, with a refiner) of an example model."""
    kind = SOURCES.get(spec["source"])
    assert kind, f"{spec['source']}: add its kind here so the docs' memory figures stay checked"
    assert kind == spec["kind"], spec
    if spec.get("refiner"):
        assert spec["refiner"] == "stabilityai/stable-diffusion-xl-refiner-1.0", spec["refiner"]
    if spec.get("vae"):
        assert spec["vae"] == "madebyollin/sdxl-vae-fp16-fix", spec["vae"]  # the SDXL VAE's architecture
    return KINDS[kind].family, bool(spec.get("refiner"))


def unique_parameters(modules) -> int:
    seen = {}
    for module in modules:
        for p in module.parameters():
            seen[id(p)] = p.numel()
    return sum(seen.values())


@pytest.fixture(scope="module")
def parameters() -> dict[tuple[str, bool], int]:
    """Parameters per (family, refiner), counted on the family files' full-size architectures built on the
    meta device from the configs bench/gpu.py builds its models from (read here, not imported: only
    tests/bench import bench/)."""
    from workers.families import FAMILIES

    cfg = json.loads(CONFIGS.read_text())
    out = {}
    with torch.device("meta"):
        for name, family in FAMILIES.items():
            out[(name, False)] = unique_parameters(family.full_size(cfg, False))
            if "refiner" in family.pipelines:
                out[(name, True)] = unique_parameters(family.full_size(cfg, True))
    return out


@pytest.fixture(scope="module")
def models() -> dict[str, dict]:
    """The example models: those of deploy/compose/models.yaml and the commented ones."""
    return {**yaml.safe_load(COMPOSE_MODELS.read_text())["models"], **commented_models(COMPOSE_MODELS)}


def weighed(names: list[str]) -> list[str]:
    """A group's models that have weights: the built-in upscaler has none."""
    return [n for n in names if n != BUILTIN_UPSCALER]


def prose(lines) -> str:
    """Comment lines as one line of text (a figure may wrap)."""
    return " ".join(line.strip().lstrip("#").strip() for line in lines)


def gib(params: int) -> float:
    return params * 2 / GiB


def test_parameter_counts_are_the_published_ones(parameters):
    """The counts deploy/README.md's weights table gives, in millions (and the reference notes)."""
    assert {k: round(v / 1e6, 2) for k, v in parameters.items()} == {
        ("sdxl", True): 5728.36, ("sdxl", False): 3468.84, ("svd", False): 2254.44, ("sd", False): 1066.24}


def readme_table(heading: str) -> list[list[str]]:
    text = README.read_text()
    section = text[text.index(heading):]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("## "):
            break
        if line.startswith("| `"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_readme_groups_state_their_weights(parameters, models):
    rows = [r for r in readme_table("## 3. Worker groups") if "GiB" in r[2] and "→" not in r[2]]
    groups = {r[0].split()[0].strip("`").removesuffix(f",{BUILTIN_UPSCALER}") for r in rows}
    assert groups == set(models)  # a row per example model
    for group, _serves, weights, peak, gpu, _length in rows:
        names = weighed(group.split()[0].strip("`").split(","))
        total = sum(gib(parameters[architecture(models[n])]) for n in names)
        assert weights == f"{total:.1f} GiB", (group, weights, total)
        estimate = re.match(r"~(\d+(?:\.\d+)?) GiB", peak)
        if estimate:  # weights plus at most what SDXL adds at 1024² (the largest still-image allowance)
            n = float(estimate.group(1))
            assert total < n <= total + SDXL_1024_ACTIVATIONS_GIB + 0.5, (group, peak, total)
            if gpu.startswith("24 GB"):
                assert n + 1 <= 22.0, (group, peak)  # an L4 / A10G: ~22.5 GiB, less ~0.5-1 GiB of context


def test_readme_weights_table_is_the_architectures(parameters, models):
    rows = [r for r in readme_table("**Weights** are exact") if "→" in r[-1]]
    assert {r[0].strip("`") for r in rows} == set(models)
    for name, _components, total in rows:
        params = parameters[architecture(models[name.strip("`")])]
        assert total == f"{params / 1e6:,.2f} M → {gib(params):.2f} GiB", (name, total)


def model_blocks(path) -> dict[str, str]:
    """Each model's lines in a models file, from its key to the next (a commented-out model's with the
    comment lines just above its key)."""
    lines = path.read_text().splitlines()
    keys = [(i, m.group(2)) for i, line in enumerate(lines)
            if (m := re.fullmatch(r"  (# )?([a-z0-9][a-z0-9.-]*):", line))]
    end = next(i for i, line in enumerate(lines) if line.startswith("defaults:"))
    out = {}
    for n, (i, name) in enumerate(keys):
        j = keys[n + 1][0] if n + 1 < len(keys) else end
        k = i
        while lines[i].startswith("  # ") and lines[k - 1].startswith("  # "):
            k -= 1
        out[name] = prose(lines[k:j])
    return out


def test_models_file_comments_state_each_models_weights(parameters, models):
    """Each model's comment in deploy/compose/models.yaml gives its weights; the header gives the sum a
    worker naming no models loads (all of them), which the README repeats."""
    blocks = model_blocks(COMPOSE_MODELS)
    assert set(blocks) == set(models)
    for name, spec in models.items():
        figure = f"{gib(parameters[architecture(spec)]):.1f} GiB of weights"
        assert figure in blocks[name], (name, figure)
    text = COMPOSE_MODELS.read_text()
    everything = sum(gib(parameters[architecture(spec)]) for spec in yaml.safe_load(text)["models"].values())
    assert f"{everything:.1f} GiB of weights" in text
    assert f"{everything:.1f} GiB of weights" in README.read_text()


def test_old_task_group_figure(parameters, models):
    """FRESCO_WORKER_TASKS=sdxl,img2img with no models named loads base + refiner and Turbo."""
    from workers.runtime import Runtime

    catalog = load_catalog(COMPOSE_MODELS)
    loaded = {m for _, m in Runtime(Settings(worker_tasks=["sdxl", "img2img"], worker_models=[]), catalog).plan()}
    total = sum(gib(parameters[architecture(models[m])]) for m in loaded)
    assert loaded == {"sdxl-base-1.0", "sdxl-turbo"}
    assert f"{total:.1f} GiB of weights" in README.read_text()


def test_k8s_group_comments_state_their_weights(parameters, models):
    """The comment above each worker Deployment gives the weights of the models it names."""
    text = (DEPLOY / "k8s" / "workers.yaml").read_text()
    for chunk in text.split("\n---\n"):
        doc = yaml.safe_load(chunk)
        if not doc or doc.get("kind") != "Deployment":
            continue
        (c,) = doc["spec"]["template"]["spec"]["containers"]
        names = weighed(next(e["value"] for e in c["env"] if e["name"] == "FRESCO_WORKER_MODELS").split(","))
        if doc["metadata"]["name"] == "fresco-worker-trainer":  # no resident weights: a copy per job
            assert "GiB" in prose(line for line in chunk.splitlines() if line.startswith("#"))
            continue
        total = sum(gib(parameters[architecture(models[n])]) for n in names)
        comment = prose(line for line in chunk.splitlines() if line.startswith("#"))
        assert f"{total:.1f} GiB of fp16" in comment, (doc["metadata"]["name"], total)
