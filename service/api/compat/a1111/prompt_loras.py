"""`<lora:name:weight>` in an AUTOMATIC1111 prompt: the LoRAs a job runs with (native `loras`).

A1111 writes extra networks into the prompt as `<type:name:weight>` and takes them out before the text
encoder sees it. Fresco does the same: each `<lora:…>` (or `<lyco:…>`, its older alias) becomes a native
`loras` entry on models that take adapters, and every tag leaves the prompt. As in A1111, a LoRA this
server does not have is skipped with a warning, not refused; so is one made for another model family. A
tag without a weight runs at the adapter's own default scale (the models file's `default_scale`). A
tag may name a LoRA the caller's API key trained (POST /train), as the native `loras` may.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from types import SimpleNamespace

from service import adapter_registry
from service.api.errors import ValidationFailed, field_error
from service.api.schemas import MAX_LORAS
from service.catalog import LORA_SCALE, Catalog

# A1111's extra-network syntax (modules/extra_networks.py `re_extra_net`).
EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
LORA_TYPES = ("lora", "lyco")


@dataclass
class PromptLoras:
    prompt: str  # the prompt without its tags
    loras: list[dict] = field(default_factory=list)  # native `loras` entries
    warnings: list[str] = field(default_factory=list)


def _shown(name: str) -> str:
    return name if len(name) <= 64 else name[:61] + "..."


def _weight(text: str | None) -> float | None:
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValidationFailed([field_error("prompt", "a LoRA tag's weight must be a number: <lora:name:0.8>")]) \
            from None
    if not math.isfinite(value) or not LORA_SCALE[0] <= value <= LORA_SCALE[1]:
        raise ValidationFailed([field_error("prompt", f"a LoRA tag's weight must be between {LORA_SCALE[0]:g} and "
                                                      f"{LORA_SCALE[1]:g}")])
    return value


def _adapter(catalog: Catalog, name: str):
    found = catalog.adapters.get(name)
    if found is None:
        folded = [a for n, a in catalog.adapters.items() if n.lower() == name.lower()]
        found = folded[0] if len(folded) == 1 else None
    return found


def _owned(owned: dict[str, dict], name: str):
    """The caller's trained adapter (service/adapter_registry.py) a tag names, as a catalogue adapter would be."""
    record = owned.get(name)
    if record is None:
        folded = [r for n, r in owned.items() if n.lower() == name.lower()]
        record = folded[0] if len(folded) == 1 else None
    if record is None:
        return None
    return SimpleNamespace(name=record["name"], kind=record["kind"],
                           fits=lambda spec: adapter_registry.fits(record, spec))


def take_loras(catalog: Catalog, model: str, prompt: str, apply: bool = True,
               owned: dict[str, dict] | None = None) -> PromptLoras:
    """The prompt's LoRA tags as native `loras` for `model`, and the prompt without any extra-network tag.
    `apply` False (A1111's `disable_extra_networks`): the tags only leave the prompt. `owned`: the LoRAs the
    caller's API key trained, which its tags may name too."""
    out = PromptLoras(prompt=EXTRA_NETWORK.sub("", prompt).strip())
    spec = catalog.models[model]
    for kind, args in EXTRA_NETWORK.findall(prompt):
        if kind.lower() not in LORA_TYPES:
            out.warnings.append(f"extra networks of type {_shown(kind)!r} are not supported; the tag was ignored")
            continue
        name, _, rest = args.partition(":")
        name = name.strip()
        weight = _weight(rest.split(":", 1)[0] if rest else None)
        if not apply:
            continue
        adapter = _adapter(catalog, name) or _owned(owned or {}, name)
        if adapter is None or adapter.kind != "lora":
            what = "an embedding (write its token in the prompt)" if adapter is not None else "not on this server"
            out.warnings.append(f"LoRA {_shown(name)!r} is {what}; skipped")
        elif not adapter.fits(spec):
            out.warnings.append(f"LoRA {adapter.name!r} does not fit model {model}; skipped")
        elif any(entry["name"] == adapter.name for entry in out.loras):
            out.warnings.append(f"LoRA {adapter.name!r} is named twice; the first tag counts")
        elif len(out.loras) >= MAX_LORAS:
            out.warnings.append(f"at most {MAX_LORAS} LoRAs run in one job; {adapter.name!r} was skipped")
        else:
            out.loras.append({"name": adapter.name, "scale": weight})
    return out


def lora_listing(catalog: Catalog, owned: dict[str, dict] | None = None) -> list[dict]:
    """`GET /sdapi/v1/loras`: the adapters of kind lora, as A1111 lists its LoRA files, then the caller's
    trained ones."""
    return [{"name": a.name, "alias": a.name, "path": a.weight_name or a.source,
             "metadata": {"description": a.description, "trigger_words": a.trigger, "base": a.base,
                          "default_scale": a.default_scale}}
            for a in catalog.adapters.values() if a.kind == "lora"] + [
        {"name": r["name"], "alias": r["name"], "path": adapter_registry.location(r["digest"])[1],
         "metadata": {"description": f"trained on {r['model']}", "trigger_words": [r["trigger"]] if r.get("trigger")
                      else [], "base": [r["family"]], "default_scale": 1.0, "owner": "you"}}
        for _, r in sorted((owned or {}).items()) if r["kind"] == "lora"]
