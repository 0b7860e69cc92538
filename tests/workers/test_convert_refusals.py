"""`fresco convert` writes into a temporary sibling of its destination and renames it into place only
once everything converted: a refused conversion (a pickle that would run code, no weights, an upscaler
spandrel cannot load back) leaves no destination, no partial sibling and no folder made for it."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from service.cli import main
from workers.convert import convert


class Boom:
    def __reduce__(self):
        return (print, ("ran",))


def model_dir(root, bad: bool = False):
    """A diffusers-layout folder: a model index, a config, one pickled weight file per component; `bad`: the
    last component's pickle would run code (the first is converted before it is met)."""
    root.mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "X"}))
    for name in ("a_first", "b_second"):
        (root / name).mkdir()
        (root / name / "config.json").write_text("{}")
        torch.save({"w": torch.ones(2, 2)}, root / name / "diffusion_pytorch_model.bin")
    if bad:
        (root / "b_second" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps({"w": Boom()}))
    return root


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_refused_directory_conversion_leaves_nothing(tmp_path, capsys):
    src = model_dir(tmp_path / "src", bad=True)
    out = tmp_path / "out"
    assert main(["convert", str(src), str(out)]) == 2
    assert "not a plain tensor pickle" in capsys.readouterr().err
    assert leftovers(tmp_path) == ["src"]  # no `out`, no partial sibling
    out.mkdir()  # an empty folder given as the destination stays as it was
    with pytest.raises(ValueError, match="not a plain tensor pickle"):
        convert(src, out)
    assert leftovers(tmp_path) == ["out", "src"] and leftovers(out) == []
    plain = tmp_path / "plain"  # safetensors already: nothing to convert, refused after copying its files
    plain.mkdir()
    (plain / "model_index.json").write_text("{}")
    with pytest.raises(ValueError, match="no pickled"):
        convert(plain, tmp_path / "new" / "deeper")
    assert leftovers(tmp_path) == ["out", "plain", "src"]


def test_a_refused_file_conversion_leaves_no_file_nor_the_folders_made_for_it(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(pickle.dumps({"state_dict": Boom()}))
    with pytest.raises(ValueError, match="not a plain tensor pickle"):
        convert(bad, tmp_path / "made" / "for" / "it.safetensors")
    assert leftovers(tmp_path) == ["bad.ckpt"]


def test_an_upscaler_spandrel_cannot_load_back_leaves_no_file(tmp_path, capsys):
    bad = tmp_path / "bad.pth"  # ESRGAN's keys, widths that are no ESRGAN: written, then refused by the check
    torch.save({"params_ema": {"conv_first.weight": torch.zeros(4, 3, 3, 3), "body.0.rdb1.conv1.weight":
                               torch.zeros(32, 4, 3, 3), "conv_body.weight": torch.zeros(4, 4, 3, 3),
                               "conv_last.weight": torch.zeros(3, 4, 3, 3)}}, bad)
    assert main(["convert", str(bad), str(tmp_path / "out" / "bad.safetensors")]) == 2
    assert "bad.pth: spandrel recognises an upscaler's keys but cannot load" in capsys.readouterr().err
    assert leftovers(tmp_path) == ["bad.pth"]


def test_a_conversion_that_succeeds_is_renamed_into_place(tmp_path):
    src = model_dir(tmp_path / "src")
    out = tmp_path / "out"
    written = convert(src, out)
    assert written == [out / "a_first" / "diffusion_pytorch_model.safetensors",
                       out / "b_second" / "diffusion_pytorch_model.safetensors"]
    assert all(p.is_file() for p in written) and (out / "model_index.json").is_file()
    assert leftovers(tmp_path) == ["out", "src"]
    ckpt = tmp_path / "one.ckpt"
    torch.save({"state_dict": {"w": torch.ones(3)}}, ckpt)
    assert convert(ckpt, tmp_path / "one") == [tmp_path / "one.safetensors"]
    assert leftovers(tmp_path) == ["one.ckpt", "one.safetensors", "out", "src"]
