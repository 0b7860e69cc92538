"""workers/adapter_files.py for models-file adapters: where a source's file is, its digest (hashed
once), safetensors only, and the tiny profile's adapters the same bytes on every machine."""

from __future__ import annotations

import hashlib
import pickle

import pytest
import safetensors.torch
import torch

from service.catalog import AdapterSpec
from service.settings import Settings
from workers.adapter_files import AdapterFiles, safetensors_problem
from workers.errors import JobFailed


@pytest.fixture
def files(tmp_path):
    return AdapterFiles(Settings(data_dir=tmp_path))


def spec(source, **kw):
    return AdapterSpec(name="x", kind="lora", source=str(source), base=["sdxl"], **kw)


def write(path, tensors=None):
    safetensors.torch.save_file(tensors or {"unet.a.lora_A.weight": torch.ones(2, 3)}, str(path))
    return path


def test_local_file_directory_and_weight_name(files, tmp_path):
    one = write(tmp_path / "one.safetensors")
    digest = "sha256:" + hashlib.sha256(one.read_bytes()).hexdigest()
    assert files.named(spec(one)).digest == digest
    assert files.known_digest(spec(one)) == digest
    folder = tmp_path / "repo"
    folder.mkdir()
    write(folder / "only.safetensors")
    assert files.named(spec(folder)).path == folder / "only.safetensors"
    write(folder / "second.safetensors", {"unet.b.lora_A.weight": torch.zeros(1, 1)})
    with pytest.raises(ValueError, match="weight_name"):
        files.named(spec(folder))
    assert files.named(spec(folder, weight_name="second.safetensors")).path == folder / "second.safetensors"
    with pytest.raises(ValueError, match="does not exist"):
        files.named(spec(tmp_path / "missing.safetensors"))


def test_a_changed_file_is_hashed_again(files, tmp_path):
    path = write(tmp_path / "a.safetensors")
    first = files.named(spec(path)).digest
    write(path, {"unet.a.lora_A.weight": torch.zeros(4, 4)})
    assert files.known_digest(spec(path)) is None
    assert files.named(spec(path)).digest != first


def test_only_safetensors_bytes(files, tmp_path):
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(pickle.dumps({"unet.a.lora_A.weight": [1, 2]}))
    with pytest.raises(JobFailed, match="not a safetensors file"):
        files.named(spec(fake))
    assert safetensors_problem(b"\x05", 1)
    assert safetensors_problem(b"\x02\x00\x00\x00\x00\x00\x00\x00[]", 10)
    good = write(tmp_path / "good.safetensors").read_bytes()
    assert safetensors_problem(good, len(good)) is None


def test_tiny_adapters_are_deterministic(tmp_path):
    one, two = AdapterFiles(Settings(data_dir=tmp_path)), AdapterFiles(Settings(data_dir=tmp_path))
    tiny = AdapterSpec(name="tiny-style", kind="lora", source="tiny", base=["sdxl"])
    assert one.known_digest(tiny) is None
    assert one.named(tiny).digest == two.named(tiny).digest == one.known_digest(tiny)
    assert set(one.named(tiny).state_dict()) == set(safetensors.torch.load(one.named(tiny).data))


@pytest.mark.parametrize("keys, families", [
    (["unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"], {"sd", "sdxl"}),
    (["lora_unet_input_blocks_4_1_proj_in.lora_down.weight", "lora_te2_x.alpha"], {"sd", "sdxl"}),  # SGM names
    (["transformer.transformer_blocks.0.attn.add_q_proj.lora_A.weight"], {"sd3"}),
    (["lora_unet_joint_blocks_0_context_block_attn_qkv.lora_down.weight"], {"sd3"}),  # SD 3's own names
    (["transformer.transformer_blocks.0.attn.to_q.lora_A.weight",  # diffusers' FLUX: SD 3's names, and more
      "transformer.single_transformer_blocks.0.proj_out.lora_A.weight"], {"flux"}),
    (["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight", "lora_te1_x.alpha"], {"flux"}),  # kohya/BFL
    (["double_blocks.0.processor.proj_lora1.down.weight"], {"flux"}),  # XLabs
    (["text_encoder.encoder.layers.0.self_attn.q_proj.lora_A.weight"], set()),  # text encoder only: unknown
])
def test_a_lora_files_family_is_told_by_its_keys(keys, families):
    from workers.lora_families import lora_families

    assert lora_families(keys) == families


@pytest.mark.parametrize("name, family", [("tiny-style", "sdxl"), ("tiny-sketch", "sdxl"), ("tiny-sd3-style", "sd3"),
                                          ("tiny-flux-style", "flux")])
def test_the_tiny_loras_are_their_familys(name, family):
    from workers.lora_families import lora_families
    from workers.tiny_adapters import adapter

    assert family in lora_families(adapter(name))
