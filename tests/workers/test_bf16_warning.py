"""`dtype: bfloat16` on a CPU without bfloat16 instructions runs several times slower than float32: the
worker says so once per model when it loads one, naming the model and what to set instead. Only torch's
CPU probe (`torch.cpu.get_capabilities`) is replaced here; the models load for real (tiny)."""

from __future__ import annotations

import logging

import pytest
import torch

from service.catalog import ModelSpec
from workers import models


def probe(monkeypatch, **flags):
    """This CPU, as torch's probe reports it: x86 with AVX-512, and `flags` on top."""
    capabilities = {"architecture": "x86_64", "avx2": True, "avx512_f": True, "avx512_bf16": False,
                    "amx_bf16": False, **flags}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    monkeypatch.setattr(models, "_warned_slow_bf16", set())


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "fresco.models" and r.levelno == logging.WARNING]


def spec(name="tiny-bf16", dtype="bfloat16", device="cpu") -> ModelSpec:
    return ModelSpec(name=name, kind="turbo", source="tiny", dtype=dtype, device=device)


def test_bfloat16_on_a_cpu_without_its_instructions_warns_once_per_model(monkeypatch, caplog):
    probe(monkeypatch)
    caplog.set_level(logging.WARNING, "fresco.models")
    model = models.load_model(spec())
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"  # loaded as asked, only said
    assert warnings(caplog) == ["model tiny-bf16: dtype bfloat16 on a CPU without bfloat16 instructions "
                                "(AVX512-BF16, AMX-BF16) runs about 5x slower than float32; set `dtype: float32` "
                                "(or `auto`) for it in the models file"]
    models.load_model(spec())  # the same model again: nothing more
    models.load_model(spec(name="other-bf16"))  # another model: its own line
    assert len(warnings(caplog)) == 2 and "model other-bf16:" in warnings(caplog)[1]


@pytest.mark.parametrize("flags, dtype", [({"avx512_bf16": True}, "bfloat16"), ({"amx_bf16": True}, "bfloat16"),
                                          ({}, "float32"), ({}, "auto")])
def test_no_warning_with_the_instructions_or_another_dtype(monkeypatch, caplog, flags, dtype):
    probe(monkeypatch, **flags)
    caplog.set_level(logging.WARNING, "fresco.models")
    models.load_model(spec(dtype=dtype))
    assert warnings(caplog) == []


def test_arm_bf16_counts_and_a_torch_without_the_probe_says_nothing(monkeypatch):
    probe(monkeypatch, architecture="aarch64", bf16=True)
    assert models.cpu_computes_bfloat16()
    probe(monkeypatch, architecture="aarch64")
    assert not models.cpu_computes_bfloat16()
    monkeypatch.delattr(torch.cpu, "get_capabilities")
    assert models.cpu_computes_bfloat16()
