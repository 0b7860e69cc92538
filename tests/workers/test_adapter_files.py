"""workers/adapter_files.py for models-file adapters: where a source's file is, its digest (hashed
once), safetensors only, and the tiny profile's adapters the same bytes on every machine."""

from __future__ import annotations

import hashlib
import json
import pickle
import struct

import pytest
import safetensors.torch
import torch

from service.catalog import AdapterSpec
from service.jobs.states import ErrorCode
from service.settings import Settings
from workers.adapter_files import MAX_HEADER_BYTES, MAX_TENSORS, AdapterFiles, safetensors_problem
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


def header_file(text: bytes, data: bytes = b"") -> bytes:
    """A safetensors file's bytes with the JSON header `text` (anything) and `data` after it."""
    return struct.pack("<Q", len(text)) + text + data


def test_a_deeply_nested_header_is_invalid_input(files, tmp_path):
    nested = header_file(b'{"a":' * 15_000 + b"1" + b"}" * 15_000)  # under the tensor cap's brace count
    assert safetensors_problem(nested, len(nested)) == "is not a safetensors file (its header is not JSON)"
    listed = header_file(b'{"__metadata__":' + b"[" * 50_000 + b"]" * 50_000 + b"}")
    assert safetensors_problem(listed, len(listed)) == "is not a safetensors file (its header is not JSON)"
    path = tmp_path / "nested.safetensors"
    path.write_bytes(nested)
    with pytest.raises(JobFailed) as failed:
        files.named(spec(path))
    assert failed.value.code == ErrorCode.INVALID_INPUT
    assert failed.value.message == "adapter x is not a safetensors file (its header is not JSON)"


def test_a_header_of_too_many_tensors_is_refused_unparsed(files, tmp_path, monkeypatch):
    many = 200_000  # a 16 MB header: safetensors parses it for seconds, into hundreds of MB
    entries = (b'"t%d":{"dtype":"F32","shape":[1],"data_offsets":[%d,%d]}' % (i, 4 * i, 4 * i + 4) for i in range(many))
    data = header_file(b"{" + b",".join(entries) + b"}", bytes(4 * many))
    parsed = []
    monkeypatch.setattr(json, "loads", lambda *a, **kw: parsed.append(1))  # the header is never parsed
    assert safetensors_problem(data, len(data)) == f"holds more than {MAX_TENSORS} tensors, more than an adapter has"
    assert not parsed
    path = tmp_path / "many.safetensors"
    path.write_bytes(data)
    with pytest.raises(JobFailed, match=f"adapter x holds more than {MAX_TENSORS} tensors") as failed:
        files.named(spec(path))
    assert failed.value.code == ErrorCode.INVALID_INPUT
    # A header longer than an adapter's is refused from its 8-byte length alone, before any of it is read.
    huge = struct.pack("<Q", MAX_HEADER_BYTES + 1)
    assert "more than an adapter's" in safetensors_problem(huge, 1 << 40)


def test_a_file_of_many_tensors_under_the_cap_loads(files, tmp_path):
    path = write(tmp_path / "many.safetensors", {f"unet.l{i}.lora_A.weight": torch.ones(1, 1) for i in range(5000)})
    assert len(files.named(spec(path)).state_dict()) == 5000
