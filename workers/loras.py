"""The adapters of one resident model: LoRAs loaded on first use and kept (up to FRESCO_WORKER_MAX_LORAS,
least recently used leave), set per job; embeddings loaded at worker start and kept.

A LoRA lives in the base pipeline's modules (UNet and both text encoders), so img2img, built on the
same modules (`from_pipe`), shares it; the refiner never gets one (workers/pipelines/sdxl.py turns
the LoRA off in the second text encoder it shares with the base while it runs). A job with no LoRAs
runs on the model's own weights with LoRA layers off: exactly the base model's arithmetic (see
`freeze` in workers/models.py).

Two ways to hold LoRAs:
- eager (the default): each LoRA is a PEFT adapter of its own (`load_lora_weights(adapter_name=)`),
  deleted when evicted (`delete_adapters`). In the text encoders, which run once per job, the job's
  LoRAs are set active (`set_adapters`); in the UNet, which runs every step, they are merged into the
  weights (see `_merge_unet`), so a resident LoRA costs a job nothing, and the UNet's own weights are
  written back exactly before another set merges;
- slots, for a model with `compile: true`: switching adapters must not recompile the compiled UNet
  blocks (diffusers #9279). Before warm-up, `enable_lora_hotswap(target_rank=lora_rank)` and one
  zero LoRA per slot (`lora_slots`) on the layers LoRAs train (SLOT_TARGETS); every slot stays active, an unused
  slot at scale 0, scales live in tensors changed in place, and a new LoRA is hot-swapped into the
  least recently used slot (`hotswap=True`). Text encoders are not compiled: their part of a LoRA
  loads plainly under the slot's name. A LoRA on other layers, or of a higher rank, is refused.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

import torch

from service.catalog import AdapterSpec, Catalog
from service.jobs.states import Stage
from workers import metrics
from workers.adapter_files import AdapterFile, AdapterFiles
from workers.errors import invalid_input

log = logging.getLogger("fresco.loras")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
# The layers a slot covers (compile: true): every UNet attention projection and feed-forward layer, the
# transformer blocks' projections in and out: what SDXL LoRA trainers (diffusers, kohya) target.
SLOT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")


@dataclass
class Resident:
    name: str  # the adapter's name inside the model (PEFT), or its slot
    digest: str
    label: str


def peft_name(digest: str) -> str:
    return "lora_" + digest.removeprefix("sha256:")[:16]


class Loras:
    """The LoRA state of one model's pipelines: which are resident, which are active at what scale."""

    def __init__(self, model, catalog: Catalog, files: AdapterFiles, capacity: int):
        self.model, self.catalog, self.files, self.capacity = model, catalog, files, capacity
        self.pipe = model.pipe
        self.resident: OrderedDict[str, Resident] = OrderedDict()  # digest -> Resident, least recently used first
        self.active_text: dict[str, tuple] = {}  # text encoder -> the (names, weights) set in it
        self.merged: tuple = ()  # the (name, weight) pairs merged into the UNet's weights now
        self.touched: dict[int, tuple] = {}  # UNet layers LoRAs have merged into: id -> (layer, its own weight)
        self.slots: list[str] = []  # slot mode: the slots' names; a slot not in `resident` is free
        self.slot_scaling: dict[str, dict[int, float]] = {}  # slot -> LoRA layer id -> its scaling at scale 1
        self.slot_state: tuple | None = None  # slot mode: each slot's scale now

    # ---- a job's LoRAs

    def use(self, loras: list[dict], progress=None) -> list[dict]:
        """Make `loras` (a job's resolved `loras`) the active ones, loading those not resident; the
        entries with each one's content digest. No LoRAs: LoRA layers off. A resident LoRA is found by
        its digest alone: no file is opened, fetched or read for it."""
        digests = [self._known(entry) for entry in loras]
        if progress is not None and any(d not in self.resident for d in digests):
            progress.preparing(Stage.ADAPTERS)  # a fetch or a load: the client sees why time passes
        files: dict[int, AdapterFile] = {}
        for i, entry in enumerate(loras):
            if digests[i] not in self.resident:
                files[i] = self._file(i, entry, {d for d in digests if d})
                digests[i] = files[i].digest
        needed = set(digests)
        weights: dict[str, float] = {}
        for i, (digest, entry) in enumerate(zip(digests, loras)):
            resident = self.resident.get(digest)
            if resident is not None:
                metrics.ADAPTER_CACHE.labels("resident", "hit").inc()
                self.resident.move_to_end(digest)
            else:
                metrics.ADAPTER_CACHE.labels("resident", "miss").inc()
                resident = self._load(files[i], needed)
            # The same file named twice (by name and by URL): one adapter, the scales add up.
            weights[resident.name] = weights.get(resident.name, 0.0) + float(entry["scale"])
        self._set(weights)
        return [{**entry, "digest": digest} for entry, digest in zip(loras, digests)]

    def _known(self, entry: dict) -> str | None:
        """The digest of `entry` when known without reading or fetching anything."""
        if "url" in entry:
            path = self.files.cache.lookup(entry["url"])
            return None if path is None else "sha256:" + path.stem
        return self.files.known_digest(self.catalog.adapters[entry["name"]])

    def _file(self, i: int, entry: dict, keep: set[str]) -> AdapterFile:
        if "url" in entry:
            return self.files.url(entry["url"], f"the LoRA at loras[{i}].url", keep)
        spec = self.catalog.adapters.get(entry["name"])
        if spec is None or spec.kind != "lora" or not spec.fits(self.model.spec):
            raise invalid_input(f"loras[{i}]: this worker has no LoRA of that name for model {self.model.name}")
        return self.files.named(spec)

    # ---- loading and evicting

    def _load(self, file: AdapterFile, needed: set[str]) -> Resident:
        started = time.perf_counter()
        state = file.state_dict()
        if any("dora_scale" in key or "lora_magnitude_vector" in key for key in state):
            raise invalid_input(f"{file.label} is a DoRA; Fresco serves plain LoRAs (DoRA weights do not merge "
                                f"into the model's as a LoRA's do)")
        if self.slots:
            resident = self._swap_into_slot(file, state, needed)
        else:
            resident = Resident(peft_name(file.digest), file.digest, file.label)
            try:
                self.pipe.load_lora_weights(state, adapter_name=resident.name)
            except Exception as exc:
                self._forget(resident.name)
                raise self._not_a_lora(file, exc) from None
            if not self._has(resident.name):
                self._forget(resident.name)
                raise self._not_a_lora(file, None)
            self.resident[file.digest] = resident
            self.active_text.clear()  # loading changed which adapters are active
            self.pipe.unet.disable_lora()  # the new LoRA's UNet layers start on; merged weights serve instead
            # Evicted only now, so a file that turns out not to be a LoRA costs no resident one.
            while len(self.resident) > self.capacity and self._evict(needed):
                pass
        seconds = time.perf_counter() - started
        metrics.ADAPTER_LOADS.labels(self.model.name).inc()
        metrics.ADAPTER_LOAD_SECONDS.labels(self.model.name).observe(seconds)
        metrics.ADAPTERS_RESIDENT.labels(self.model.name).set(len(self.resident))
        log.info("loaded %s (%s) into %s in %.2fs; %d resident", file.label, file.digest[:19], self.model.name,
                 seconds, len(self.resident))
        return resident

    def _not_a_lora(self, file: AdapterFile, exc: Exception | None):
        reason = f": {str(exc).splitlines()[0][:300]}" if exc is not None and str(exc) else ""
        return invalid_input(f"{file.label} is not a LoRA for model {self.model.name} (a {self.model.spec.kind} "
                             f"model); its layers do not match the model's{reason}")

    def _has(self, name: str) -> bool:
        return any(name in names for names in self.pipe.get_list_adapters().values())

    def _evict(self, needed: set[str]) -> bool:
        """Delete the least recently used LoRA this job does not use; False when every resident one is
        needed (a job with more LoRAs than the capacity: they stay until a later job evicts them)."""
        digest = next((d for d in self.resident if d not in needed), None)
        if digest is None:
            log.info("%s: this job uses %d LoRAs, more than FRESCO_WORKER_MAX_LORAS (%d); the extra leave with "
                     "a later job", self.model.name, len(needed), self.capacity)
            return False
        resident = self.resident.pop(digest)
        self._forget(resident.name)
        self.active_text.clear()  # the adapter set changed: set it again
        log.info("evicted %s from %s (least recently used)", resident.label, self.model.name)
        return True

    def _forget(self, name: str) -> None:
        """Delete adapter `name` from every module that has it (a failed load may have left a part)."""
        present = [part for part, names in self.pipe.get_list_adapters().items() if name in names]
        if present:
            self.pipe.delete_adapters(name)

    # ---- which are active

    def _set(self, weights: dict[str, float]) -> None:
        weights = {name: w for name, w in weights.items() if w != 0.0}  # scale 0: as if absent
        for prefix in TEXT_ENCODERS:
            self._set_text_encoder(prefix, weights)
        if self.slots:
            self._set_slot_scales(weights)
        else:
            self._merge_unet(weights)

    def _set_text_encoder(self, prefix: str, weights: dict[str, float]) -> None:
        """Text encoders keep their LoRA layers (they run once per job): the job's active, or none."""
        from diffusers.loaders.lora_base import set_adapters_for_text_encoder

        encoder = getattr(self.pipe, prefix, None)
        present = getattr(encoder, "peft_config", None)
        if not present:
            return
        names = [n for n in weights if n in present]
        state = (tuple(names), tuple(weights[n] for n in names))
        if self.active_text.get(prefix) == state:
            return
        if names:
            enable_text_encoder(encoder, True)
            set_adapters_for_text_encoder(names, encoder, [weights[n] for n in names])
        else:
            enable_text_encoder(encoder, False)
        self.active_text[prefix] = state

    def _merge_unet(self, weights: dict[str, float]) -> None:
        """The UNet runs every step: its LoRA layers stay off, and the job's LoRAs are merged into the
        weights of the layers they train (W + Σ scale × ΔW, diffusers' `fuse_lora` without its inexact
        unfuse). Each layer's own weights are kept aside, once, and written back before another set of
        LoRAs merges, so a job gets exactly the weights it would get after a fresh start: none, A after
        B, A alone are the same arithmetic every time. A resident LoRA then costs a job nothing."""
        from peft.tuners.lora import LoraLayer

        state = tuple(sorted(weights.items()))
        if state == self.merged:
            return
        with torch.no_grad():
            for base, original in self.touched.values():
                base.weight.copy_(original)
            self.merged = ()
            if weights:
                for module in self.pipe.unet.modules():
                    if not isinstance(module, LoraLayer):
                        continue
                    names = [n for n in weights if n in module.lora_A]
                    if not names:
                        continue
                    base = module.get_base_layer()
                    if id(base) not in self.touched:
                        # Kept aside once, where the models file says (`lora_backup`).
                        keep = "cpu" if self.model.spec.lora_backup == "cpu" else base.weight.device
                        self.touched[id(base)] = (base, base.weight.detach().to(keep, copy=True))
                    for name in names:
                        module.set_scale(name, weights[name])
                        base.weight.add_(module.get_delta_weight(name))
            self.merged = state

    # ---- slots (compile: true)

    def prepare_slots(self, rank: int, count: int) -> None:
        """Before the UNet is compiled (warm-up): hotswap on, and `count` zero LoRAs of `rank` on the slot
        layers, every one active, at scale 0, with tensor scales. Every slot runs in every job (a
        compiled graph cannot skip one), so each costs compute: rank × (in + out) multiply-adds per token
        on each slot layer; keep `lora_slots` and `lora_rank` as small as the LoRAs served allow."""
        from peft.utils.hotswap import _convert_scalings_to_tensor

        unet = self.pipe.unet
        unet.enable_lora_hotswap(target_rank=rank)
        placeholder = {}
        for name, module in unet.named_modules():
            if isinstance(module, torch.nn.Linear) and any(name.endswith("." + t) for t in SLOT_TARGETS):
                placeholder[f"{name}.lora_A.weight"] = torch.zeros(rank, module.in_features)
                placeholder[f"{name}.lora_B.weight"] = torch.zeros(module.out_features, rank)
        self.slots = [f"slot{i}" for i in range(count)]
        self.capacity = count
        for slot in self.slots:
            unet.load_lora_adapter(dict(placeholder), prefix=None, adapter_name=slot)
        unet.set_adapters(self.slots, [1.0] * len(self.slots))
        _convert_scalings_to_tensor(unet)
        for slot in self.slots:
            self._record_scaling(slot)
        self._set_slot_scales({})
        log.info("%s: %d LoRA slots of rank %d on %d layers (compile: LoRAs hot-swap in)", self.model.name,
                 len(self.slots), rank, len(placeholder) // 2)

    def _swap_into_slot(self, file: AdapterFile, state: dict, needed: set[str]) -> Resident:
        used = {r.name: d for d, r in self.resident.items()}
        free = [s for s in self.slots if s not in used]
        if free:
            slot = free[0]
        else:
            digest = next((d for d in self.resident if d not in needed), None)
            if digest is None:
                raise invalid_input(f"this job names more LoRAs than model {self.model.name} has LoRA slots "
                                    f"({len(self.slots)}: `lora_slots` in the models file)")
            slot = self.resident.pop(digest).name
        pipe = self.pipe
        try:
            state, alphas, metadata = pipe.lora_state_dict(state, unet_config=pipe.unet.config,
                                                           return_lora_metadata=True)
            unet_part = {k: v for k, v in state.items() if k.startswith("unet.")}
            if not unet_part:
                raise ValueError("it has no UNet layers")
            self._check_fits_slot(unet_part, slot)  # before diffusers: a failed swap would delete the slot
            pipe.load_lora_into_unet(unet_part, network_alphas=alphas, unet=pipe.unet, adapter_name=slot,
                                     metadata=metadata, _pipeline=pipe, hotswap=True)
            for prefix in TEXT_ENCODERS:
                encoder = getattr(pipe, prefix, None)
                if encoder is None:
                    continue
                self._drop_text_encoder_adapter(encoder, slot)
                part = {k: v for k, v in state.items() if k.startswith(prefix + ".")}
                if part:
                    pipe.load_lora_into_text_encoder(part, network_alphas=alphas, text_encoder=encoder, prefix=prefix,
                                                     adapter_name=slot, metadata=metadata, _pipeline=pipe)
        except Exception as exc:
            self._clear_slot(slot)
            raise self._not_a_lora(file, exc) from None
        self._record_scaling(slot)
        self.active_text.clear()
        self.slot_state = None  # the swap set the slot's scales: set them again
        resident = self.resident[file.digest] = Resident(slot, file.digest, file.label)
        return resident

    def _record_scaling(self, slot: str) -> None:
        """Each layer's scaling of the LoRA now in `slot` at scale 1 (alpha / rank, per layer: a swap
        sets it from the new LoRA's own alphas), which job scales multiply."""
        from peft.tuners.lora import LoraLayer

        self.slot_scaling[slot] = {id(m): float(m.scaling[slot]) for m in self.pipe.unet.modules()
                                   if isinstance(m, LoraLayer) and slot in m.scaling}

    def _check_fits_slot(self, unet_part: dict, slot: str) -> None:
        """Every UNet layer of the LoRA is a slot layer, of a rank the slot holds."""
        from diffusers.utils import convert_unet_state_dict_to_peft

        state = convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in unet_part.items()})
        unet = self.pipe.unet
        for key, value in state.items():
            if not key.endswith((".lora_A.weight", ".lora_B.weight")):
                continue
            module_name, which, _ = key.rsplit(".", 2)
            try:
                held = getattr(unet.get_submodule(module_name), which)[slot].weight.shape
            except (AttributeError, KeyError, TypeError):
                raise ValueError(f"it trains layer {module_name}, which the compiled model's LoRA slots do not "
                                 f"cover (they cover {', '.join(SLOT_TARGETS)})") from None
            # lora_A is (rank, in), lora_B (out, rank): the rank may be smaller than the slot's, the rest not.
            rank_dim = 0 if which == "lora_A" else 1
            if value.shape[rank_dim] > held[rank_dim]:
                raise ValueError(f"its rank {value.shape[rank_dim]} is above the slots' rank {held[rank_dim]} "
                                 f"(`lora_rank` in the models file)")
            if value.shape[1 - rank_dim] != held[1 - rank_dim]:
                raise ValueError(f"its layer {module_name} has other dimensions than the model's")

    @staticmethod
    def _drop_text_encoder_adapter(encoder, name: str) -> None:
        from diffusers.utils.peft_utils import delete_adapter_layers

        if name in getattr(encoder, "peft_config", {}):
            delete_adapter_layers(encoder, name)
            getattr(encoder, "peft_config", {}).pop(name, None)

    def _clear_slot(self, slot: str) -> None:
        """A failed swap may have left part of a LoRA in `slot`: zero its weights (its scale is 0 too)."""
        with torch.no_grad():
            for module in self.pipe.unet.modules():
                for attr in ("lora_A", "lora_B"):
                    layers = getattr(module, attr, None)
                    if isinstance(layers, torch.nn.ModuleDict) and slot in layers:
                        layers[slot].weight.zero_()
        for prefix in TEXT_ENCODERS:
            encoder = getattr(self.pipe, prefix, None)
            if encoder is not None:
                self._drop_text_encoder_adapter(encoder, slot)

    def _set_slot_scales(self, weights: dict[str, float]) -> None:
        """Every slot stays active (the compiled graph runs all of them); scales change in place."""
        from peft.tuners.lora import LoraLayer
        from peft.utils.hotswap import _update_scaling

        state = tuple(weights.get(s, 0.0) for s in self.slots)
        if self.slot_state == state:
            return
        for module in self.pipe.unet.modules():
            if isinstance(module, LoraLayer):
                for slot, scale in zip(self.slots, state):
                    base = self.slot_scaling[slot].get(id(module))
                    if base is not None:
                        _update_scaling(module, slot, scale * base)
        self.slot_state = state

    # ---- embeddings

    def load_embeddings(self, specs: list[AdapterSpec]) -> None:
        """Textual-inversion embeddings, into each text encoder they have vectors for, at worker start."""
        for spec in specs:
            state = self.files.named(spec).state_dict()
            encoders = [(getattr(self.pipe, te, None), getattr(self.pipe, tok, None), key)
                        for te, tok, key in (("text_encoder", "tokenizer", "clip_l"),
                                             ("text_encoder_2", "tokenizer_2", "clip_g"))]
            encoders = [(te, tok, key) for te, tok, key in encoders if te is not None]
            loaded = 0
            for te, tok, key in encoders:
                vectors = state.get(key)
                if vectors is None and len(encoders) == 1:
                    vectors = next(iter(state.values()))  # an SD 1.x file: one tensor
                if vectors is None:
                    raise ValueError(f"adapter {spec.name}: the embedding has no `{key}` vectors, which model "
                                     f"{self.model.name} needs for each of its text encoders")
                tokens = spec.token[0] if len(spec.token) == 1 else spec.token
                self.pipe.load_textual_inversion(vectors, token=tokens, text_encoder=te, tokenizer=tok)
                loaded += 1
            log.info("loaded embedding %s (%s) into %d text encoder(s) of %s", spec.name, ", ".join(spec.token),
                     loaded, self.model.name)


def enable_text_encoder(encoder, on: bool) -> None:
    from diffusers.loaders.lora_base import disable_lora_for_text_encoder, enable_lora_for_text_encoder

    (enable_lora_for_text_encoder if on else disable_lora_for_text_encoder)(encoder)


@contextlib.contextmanager
def no_lora_in(encoder):
    """LoRA layers off in `encoder` for a while (the refiner's text encoder, which the base shares)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if encoder is None or not getattr(encoder, "peft_config", None) or all(
            m.disable_adapters for m in encoder.modules() if isinstance(m, BaseTunerLayer)):
        yield  # no LoRA on in it: nothing to turn off, nothing to turn back on
        return
    enable_text_encoder(encoder, False)
    try:
        yield
    finally:
        enable_text_encoder(encoder, True)
