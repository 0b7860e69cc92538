"""The GPU memory figures the deployment docs give (deploy/README.md §3, the comments of
deploy/compose/models.yaml and deploy/k8s/workers.yaml) against the architectures themselves: each
example model is built on the `meta` device (no memory, no weights) from the full-size configs
bench/gpu.py uses (bench/configs/full_size.json, through each family file's `full_size`), and its
weights counted once each (the refiner shares the base's VAE and bigG encoder, as workers/models.py
loads it): parameters and persistent buffers (SD 3's positional embedding table is a buffer of its
checkpoint: 0.09 B of SD 3.5 large's 8.1 B, 0.23 B of medium's 2.5 B). Resident weights in a 2-byte
dtype are those × 2 bytes, in GiB; with `quantize` (workers/quantize.py: the Linear layers of the
denoiser and of any T5 encoder), a quantized Linear weight takes 1 byte per parameter (int8, fp8; fp8
only where both sides are multiples of 16, as workers/quantize.py leaves the others) or 0.5 (nf4), plus
its scales (one float32 per output row; nf4: one per block of 64), everything else 2. Peaks are
estimates, so only their consistency with the weights is checked."""

from __future__ import annotations

import json
import re

import pytest
import torch
import yaml

from service.catalog import ModelSpec, load_catalog
from service.catalog.models import BUILTIN_UPSCALER
from service.families import KINDS
from service.settings import Settings
from tests.conftest import ROOT
from tests.deploy.conftest import COMPOSE_MODELS, DEPLOY, commented_models

README = DEPLOY / "README.md"
CONFIGS = ROOT / "bench" / "configs" / "full_size.json"
# The published architecture behind each example source (a hub id): the model kind whose family file
# builds it (workers/families/<family>.py `full_size`, on the meta device), and for the transformer
# families, which of a family's published transformers it has (the family file builds SD 3.5 large and
# FLUX.1-dev; medium and schnell differ only in their transformer). An SDXL base with its refiner counts
# the refiner too (it shares the base's VAE and bigG encoder, as workers/models.py loads it).
SOURCES = {
    "stabilityai/stable-diffusion-xl-base-1.0": "sdxl",
    "stabilityai/sdxl-turbo": "turbo",
    "stabilityai/stable-video-diffusion-img2vid-xt": "svd",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd",
    "stabilityai/stable-diffusion-3.5-large": "sd3",
    "stabilityai/stable-diffusion-3.5-medium": "sd3",
    "black-forest-labs/FLUX.1-dev": "flux",
    "black-forest-labs/FLUX.1-schnell": "flux",
}
TRANSFORMERS = {
    "stabilityai/stable-diffusion-3.5-large": "SD35_LARGE_TRANSFORMER",
    "stabilityai/stable-diffusion-3.5-medium": "SD35_MEDIUM_TRANSFORMER",
    "black-forest-labs/FLUX.1-dev": "FLUX1_DEV_TRANSFORMER",
    "black-forest-labs/FLUX.1-schnell": "FLUX1_SCHNELL_TRANSFORMER",
}
# The published sizes, in billions: Stability AI's model cards (SD 3.5 large 8.1B, medium 2.5B), Black
# Forest Labs' (FLUX.1 12B), T5 v1.1 XXL's encoder (4.7B, half of its 11B).
PUBLISHED_B = {"SD35_LARGE_TRANSFORMER": 8.1, "SD35_MEDIUM_TRANSFORMER": 2.5, "FLUX1_DEV_TRANSFORMER": 12,
               "FLUX1_SCHNELL_TRANSFORMER": 12, "T5_XXL_ENCODER": 4.7}
GiB = 2**30
QUANTIZED_BYTES = {"int8": 1.0, "fp8": 1.0, "nf4": 0.5}
SCALE_BYTES = 4  # a float32 scale: per output row (int8, fp8), per block of NF4_BLOCK weights (nf4)
NF4_BLOCK = 64
# The one published peak the estimates lean on: SDXL base alone, 1024², one image, 30 steps, bf16 +
# SDPA: 8.96 GiB (torch.cuda.max_memory_allocated, A100), i.e. this much above its weights.
SDXL_1024_ACTIVATIONS_GIB = 8.96 - 6.46
# What SD 3.5 / FLUX.1 add at 1024², one image, over their weights (estimate, deploy/README.md §3): the
# transformer's activations (4,096 image tokens + 154 or 512 text tokens, 2 or 1 sequences) and the VAE
# decode at 1024²; the README's transformer-group peaks lie within this of their weights.
TRANSFORMER_1024_ACTIVATIONS_GIB = 4.0


def architecture(spec: dict) -> tuple[str, bool, bool]:
    """(source, with a refiner, with T5) of an example model: what its weights are."""
    kind = SOURCES.get(spec["source"])
    assert kind, f"{spec['source']}: add its kind here so the docs' memory figures stay checked"
    assert kind == spec["kind"], spec
    if spec.get("refiner"):
        assert spec["refiner"] == "stabilityai/stable-diffusion-xl-refiner-1.0", spec["refiner"]
    if spec.get("vae"):
        assert spec["vae"] == "madebyollin/sdxl-vae-fp16-fix", spec["vae"]  # the SDXL VAE's architecture
    return spec["source"], bool(spec.get("refiner")), spec.get("t5", True)


def denoiser(module) -> bool:
    return type(module).__name__ in ("UNet2DConditionModel", "SD3Transformer2DModel", "FluxTransformer2DModel")


_BUILT: dict = {}


def _full_size(family, refiner: bool) -> list:
    """`family.full_size` on the meta device, built once per test session (a few seconds each)."""
    key = (family.name, refiner)
    if key not in _BUILT:
        with torch.device("meta"):
            _BUILT[key] = family.full_size(json.loads(CONFIGS.read_text()), refiner)
    return _BUILT[key]


def built(source: str, refiner: bool = False, t5: bool = True) -> list:
    """The modules of `source`'s architecture on the meta device: its family file's `full_size`, with the
    source's own transformer (TRANSFORMERS) and without T5 when the model says `t5: false`."""
    from workers.families import FAMILIES
    from workers.quantize import T5_CLASSES

    key = (source, refiner, t5)
    if key not in _BUILT:
        cfg = json.loads(CONFIGS.read_text())
        modules = _full_size(FAMILIES[KINDS[SOURCES[source]].family], refiner)
        with torch.device("meta"):
            if source in TRANSFORMERS:
                (old,) = [m for m in modules if denoiser(m) and "Transformer" in type(m).__name__]
                modules = [type(m)(**cfg[TRANSFORMERS[source]]) if m is old else m for m in modules]
        _BUILT[key] = [m for m in modules if t5 or type(m).__name__ not in T5_CLASSES]
    return _BUILT[key]


def tensors(modules) -> dict[int, torch.Tensor]:
    """Every parameter and persistent buffer (what a checkpoint holds), each once."""
    seen = {}
    for module in modules:
        for t in module.state_dict(keep_vars=True).values():
            seen[id(t)] = t
    return seen


def count(modules) -> int:
    return sum(t.numel() for t in tensors(modules).values())


def quantized(modules, setting: str) -> set[int]:
    """The weights `quantize: setting` quantizes (workers/quantize.py): the Linear layers of the denoiser
    and of any T5 encoder (fp8: those whose sides are both multiples of 16)."""
    from workers.quantize import FP8_MULTIPLE, T5_CLASSES

    out = set()
    for module in modules:
        if denoiser(module) or type(module).__name__ in T5_CLASSES:
            for layer in module.modules():
                if isinstance(layer, torch.nn.Linear) and (setting != "fp8" or (
                        layer.in_features % FP8_MULTIPLE == 0 and layer.out_features % FP8_MULTIPLE == 0)):
                    out.add(id(layer.weight))
    return out


def weight_bytes(modules, setting: str | None = None) -> float:
    """Resident bytes in a 2-byte dtype, the quantized weights (if any) at their width plus scales."""
    q = quantized(modules, setting) if setting else set()
    total = 0.0
    for key, t in tensors(modules).items():
        if key in q:
            scales = t.numel() / NF4_BLOCK if setting == "nf4" else t.shape[0]
            total += t.numel() * QUANTIZED_BYTES[setting] + scales * SCALE_BYTES
        else:
            total += t.numel() * 2
    return total


def resident_gib(spec: dict) -> float:
    """An example model's resident weights in GiB: a 2-byte dtype, and its `quantize` if any."""
    return weight_bytes(built(*architecture(spec)), spec.get("quantize")) / GiB


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


def test_parameter_counts_are_the_published_ones():
    """The counts deploy/README.md's weights table gives, in millions (and the reference notes), of each
    family file's full-size architecture; and each transformer's and T5-XXL's against its publisher's size
    (SD 3.5's only with its positional-embedding buffer: parameters alone, medium would be 10% short)."""
    from workers.families import FAMILIES

    cfg = json.loads(CONFIGS.read_text())
    families = {}
    with torch.device("meta"):
        for name, family in FAMILIES.items():
            for refiner in (False, True) if "refiner" in family.pipelines else (False,):
                families[(name, refiner)] = count(_full_size(family, refiner))
        from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
        from transformers import T5Config, T5EncoderModel

        parts = {key: (SD3Transformer2DModel if key.startswith("SD3") else FluxTransformer2DModel)(**cfg[key])
                 for key in PUBLISHED_B if key != "T5_XXL_ENCODER"}
        parts["T5_XXL_ENCODER"] = T5EncoderModel(T5Config(**cfg["T5_XXL_ENCODER"]))
    assert {k: round(v / 1e6, 2) for k, v in families.items()} == {
        ("sdxl", True): 5728.36, ("sdxl", False): 3468.84, ("svd", False): 2254.44, ("sd", False): 1066.24,
        ("sd3", False): 13810.72, ("flux", False): 16870.6}
    for key, module in parts.items():
        assert count([module]) / 1e9 == pytest.approx(PUBLISHED_B[key], rel=0.02), key
    medium_parameters = sum(p.numel() for p in parts["SD35_MEDIUM_TRANSFORMER"].parameters())
    assert medium_parameters / 1e9 != pytest.approx(PUBLISHED_B["SD35_MEDIUM_TRANSFORMER"], rel=0.02)


def test_quantized_sizes_follow_the_bytes_per_weight():
    """The quantized figures' arithmetic on FLUX.1-schnell (T5 included): int8 and fp8 store the same bytes
    here (every Linear of FLUX and T5-XXL has sides that are multiples of 16), nf4 about half that, and
    what is left in bf16 (CLIP-L, the VAE, embeddings, norms, biases) the same in all three."""
    modules = built("black-forest-labs/FLUX.1-schnell")
    bf16, int8, fp8, nf4 = (weight_bytes(modules, s) for s in (None, "int8", "fp8", "nf4"))
    int8_layers = quantized(modules, "int8")
    weights = [t for k, t in tensors(modules).items() if k in int8_layers]
    linear, rows = sum(t.numel() for t in weights), sum(t.shape[0] for t in weights)
    assert quantized(modules, "fp8") == int8_layers
    assert int8 == fp8 == bf16 - linear + rows * SCALE_BYTES  # 2 bytes -> 1, and a scale per row
    assert nf4 == bf16 - linear * (1.5 - SCALE_BYTES / NF4_BLOCK)  # 2 bytes -> 0.5, and a scale per 64
    assert 0.95 < linear / count(modules) < 1  # nearly all of it is Linear weights


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


def activations_allowance(spec: dict) -> float:
    """What the README's peak estimate may add to a model's weights: SDXL's at 1024² for the UNet families,
    TRANSFORMER_1024_ACTIVATIONS_GIB for SD 3.5 and FLUX.1."""
    return TRANSFORMER_1024_ACTIVATIONS_GIB if spec["source"] in TRANSFORMERS else SDXL_1024_ACTIVATIONS_GIB


def test_readme_groups_state_their_weights(models):
    rows = [r for r in readme_table("## 3. Worker groups") if len(r) == 6 and "GiB" in r[2]]
    groups = {r[0].split()[0].strip("`").removesuffix(f",{BUILTIN_UPSCALER}") for r in rows}
    assert groups == set(models)  # a row per example model
    for group, _serves, weights, peak, gpu, _length in rows:
        names = weighed(group.split()[0].strip("`").split(","))
        total = sum(resident_gib(models[n]) for n in names)
        assert weights.split(" (")[0] == f"{total:.1f} GiB", (group, weights, total)
        estimate = re.match(r"~(\d+(?:\.\d+)?) GiB", peak)
        if estimate:  # weights plus at most what the family adds at 1024² (the largest still-image allowance)
            n = float(estimate.group(1))
            allowance = max(activations_allowance(models[m]) for m in names)
            assert total < n <= total + allowance + 0.5, (group, peak, total)
            if gpu.startswith("24 GB"):
                assert n + 1 <= 22.0, (group, peak)  # an L4 / A10G: ~22.5 GiB, less ~0.5-1 GiB of context


def test_readme_weights_table_is_the_architectures(models):
    rows = [r for r in readme_table("**Weights** are exact") if "→" in r[-1]]
    assert {r[0].strip("`") for r in rows} == set(models)
    for name, _components, total in rows:
        modules = built(*architecture(models[name.strip("`")]))
        params, size = count(modules), weight_bytes(modules) / GiB
        assert total == f"{params / 1e6:,.2f} M → {size:.2f} GiB", (name, total)


def test_readme_quantized_table_is_the_arithmetic(models):
    """The quantized sizes of every SD 3.5 / FLUX.1 example, T5 included (bf16, int8, fp8, nf4)."""
    text = README.read_text()
    header = "| model | bf16 | int8 | fp8 | nf4 |"
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text[text.index(header):].splitlines()[2:]]
    rows = [r for r in rows[:next((i for i, r in enumerate(rows) if not r[0].startswith("`")), len(rows))]]
    expected = {n for n, s in models.items() if s["source"] in TRANSFORMERS}
    assert {r[0].strip("`") for r in rows} == expected
    for name, *figures in rows:
        modules = built(*architecture(models[name.strip("`")]))
        assert figures == [f"{weight_bytes(modules, s) / GiB:.1f} GiB" for s in (None, "int8", "fp8", "nf4")], name


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


def test_models_file_comments_state_each_models_weights(models):
    """Each model's comment in deploy/compose/models.yaml gives its weights (quantized, if it says so); the
    header gives the sum a worker naming no models loads (all of them), which the README repeats."""
    blocks = model_blocks(COMPOSE_MODELS)
    assert set(blocks) == set(models)
    for name, spec in models.items():
        figure = f"{resident_gib(spec):.1f} GiB of weights"
        assert figure in blocks[name], (name, figure)
        ModelSpec(name=name, **spec)  # the commented ones too are valid entries
    text = COMPOSE_MODELS.read_text()
    everything = sum(resident_gib(spec) for spec in yaml.safe_load(text)["models"].values())
    assert f"{everything:.1f} GiB of weights" in text
    assert f"{everything:.1f} GiB of weights" in README.read_text()


def test_old_task_group_figure(models):
    """FRESCO_WORKER_TASKS=sdxl,img2img with no models named loads every model that serves img2img."""
    from workers.runtime import Runtime

    catalog = load_catalog(COMPOSE_MODELS)
    loaded = {m for _, m in Runtime(Settings(worker_tasks=["sdxl", "img2img"], worker_models=[]), catalog).plan()}
    total = sum(resident_gib(models[m]) for m in loaded)
    assert loaded == {"sdxl-base-1.0", "sdxl-turbo", "sd3.5-large", "flux1-schnell"}
    assert f"{total:.1f} GiB of weights" in README.read_text()


def test_k8s_group_comments_state_their_weights(models):
    """The comment above each worker Deployment gives the weights of the models it names (fp16, or the
    quantized size with the setting named)."""
    text = (DEPLOY / "k8s" / "workers.yaml").read_text()
    for chunk in text.split("\n---\n"):
        doc = yaml.safe_load(chunk)
        if not doc or doc.get("kind") != "Deployment":
            continue
        (c,) = doc["spec"]["template"]["spec"]["containers"]
        names = weighed(next(e["value"] for e in c["env"] if e["name"] == "FRESCO_WORKER_MODELS").split(","))
        comment = prose(line for line in chunk.splitlines() if line.startswith("#"))
        if doc["metadata"]["name"] == "fresco-worker-trainer":  # no resident weights: a copy per job
            assert "GiB" in comment
            continue
        total = sum(resident_gib(models[n]) for n in names)
        settings = {models[n].get("quantize") for n in names} - {None}
        label = f"{settings.pop()}-quantized weights" if settings else "fp16"
        assert f"{total:.1f} GiB of {label}" in comment, (doc["metadata"]["name"], total, label)
