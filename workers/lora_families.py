"""Which family a LoRA file was made for, from its keys alone (the family table's `lora_keys`).

A LoRA made for another family must be refused before it loads, not after: diffusers' converters
accept more than they should (an SDXL file's `lora_te1_` CLIP-L part loads into FLUX's CLIP-L, and its
UNet part is then dropped with a warning), and FLUX's loader widens the transformer's own layers for a
Control LoRA. Names tell the families apart; widths tell SD 1.x from SDXL, which share the UNet's
names, and loading still checks them. A file no family's marks match (text encoders only, an unknown
layout) is left to the loader, as before.
"""

from __future__ import annotations

import re
from functools import lru_cache

from service.families import FAMILIES


@lru_cache(maxsize=None)
def _marks() -> dict[str, re.Pattern]:
    return {f.name: re.compile(f.lora_keys) for f in FAMILIES.values() if f.lora_keys}


def lora_families(keys) -> set[str]:
    """The families a LoRA file with these keys was made for (several that share layer names: SD 1.x
    and SDXL), or none known."""
    found = {name for name, mark in _marks().items() if any(mark.search(k) for k in keys)}
    outranked = {other for name in found for other in FAMILIES[name].lora_keys_over}
    return found - outranked


def family_problem(keys, family: str) -> str | None:
    """Why a LoRA file with these keys does not fit a model of `family`, or None (it does, or its
    family is unknown)."""
    made_for = lora_families(keys)
    if not made_for or family in made_for:
        return None
    return f"is a LoRA for {' or '.join(sorted(made_for))} models, by its layer names"
