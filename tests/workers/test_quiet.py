"""workers/quiet.py, in fresh processes (logging is process-wide): the known harmless library lines
are gone from a worker's start, and nothing else is."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

from packaging.version import Version

from tests.conftest import ROOT

NOISE = ("should be kept in float32: []", "requires torchvision (not installed)", "LOAD REPORT",
         "Already found a `peft_config`", "Loading weights")
# transformers 5.25 no longer reports the resident LoRA's layers as missing when another one loads.
PRINTED = NOISE if Version(version("transformers")) < Version("5.25") else tuple(n for n in NOISE if n != "LOAD REPORT")

LOAD = """
import logging, sys, torch
from service.logs import configure_logging
from service.settings import Settings
configure_logging(Settings())
if sys.argv[1] == "quiet":
    from workers import quiet
    quiet.silence_known_noise()
from transformers import CLIPImageProcessor
from workers import tiny_adapters
from workers.families.sdxl import tiny_base
CLIPImageProcessor(crop_size=224, size=224)  # SVD's feature extractor, without torchvision
base = tiny_base()
base.vae.to(dtype=torch.bfloat16)            # a cast of a model
base.load_lora_weights(tiny_adapters.lora(1), adapter_name="one")  # two LoRAs with text-encoder parts
base.load_lora_weights(tiny_adapters.lora(2), adapter_name="two")
logging.getLogger("diffusers.models.modeling_utils").warning("a warning that means something")
"""


def stderr_of(*modes: str) -> list[str]:
    """Each mode's run, side by side (each process spends most of its time importing torch and diffusers)."""
    procs = [subprocess.Popen([sys.executable, "-c", LOAD, mode], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, cwd=ROOT) for mode in modes]
    out = []
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        out.append(err)
    return out


def test_known_noise_is_printed_without_the_filters_and_gone_with_them():
    loud, quiet = stderr_of("loud", "quiet")
    assert all(line in loud for line in PRINTED)  # the lines this silences do appear (the test is real)
    assert not any(line in quiet for line in NOISE)
    assert "a warning that means something" in quiet
