"""The LoRAs of one resident model: loaded on first use and kept (up to FRESCO_WORKER_MAX_LORAS, least
recently used leave), and set per job. Embeddings are workers/embeddings.py's.

A LoRA lives in the base pipeline's modules (the denoiser and the text encoders), so img2img and the
control pipelines, built on the same modules (`from_pipe`), share it; the refiner never gets one
(workers/pipelines/sdxl.py turns the LoRA off in the text encoder it shares with the base while it
runs). A job with no LoRAs runs on the model's own weights with LoRA layers off: exactly the base
model's arithmetic (see `freeze` in workers/models.py).

Each LoRA is a PEFT adapter of its own (`load_lora_weights(adapter_name=)`), deleted when evicted
(`delete_adapters`). In the text encoders, which run once per job, the job's LoRAs are set active
(`set_adapters`). In the denoiser, which runs every step, they are merged into the weights
(workers/lora_merge.py: a resident LoRA costs a job nothing), run beside quantized weights, which no
delta adds to (`ActiveLoras`), or, in a compiled denoiser, hot-swapped into slots prepared before
compilation (workers/lora_slots.py: switching never recompiles). Every family's files are read by its
pipeline's own reader and loaded the same way (workers/lora_parts.py); a file made for another family
is refused by its keys first (workers/lora_families.py).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from service import lora_urls
from service.catalog import AdapterSpec, Catalog
from service.jobs.states import Stage
from workers import metrics
from workers.adapter_files import AdapterFile, AdapterFiles
from workers.embeddings import load_embeddings, load_vectors, unload_vectors
from workers import lora_parts
from workers.errors import invalid_input
from workers.lora_families import family_problem
from workers.lora_merge import ActiveLoras, MergedLoras
from workers.lora_slots import LoraSlots

log = logging.getLogger("fresco.loras")


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
        # Merged into the weights; beside quantized ones (nothing adds to them); LoraSlots after prepare_slots.
        self.denoiser: MergedLoras | ActiveLoras | LoraSlots = (ActiveLoras if model.spec.quantize
                                                                 else MergedLoras)(model)
        self.job_embeddings: dict[str, str] = {}  # token -> digest: an API key's embeddings loaded for a job

    @property
    def slots(self) -> list[str]:
        """The slots' names (compile: true), or none."""
        return self.denoiser.names if isinstance(self.denoiser, LoraSlots) else []

    def prepare_slots(self, rank: int, count: int) -> None:
        """Before the denoiser is compiled: LoRAs hot-swap into `count` slots of `rank` from now on."""
        self.denoiser = LoraSlots(self.model, rank, count)
        self.capacity = count

    def load_embeddings(self, specs: list[AdapterSpec]) -> None:
        load_embeddings(self.model, self.files, specs)

    def use_embeddings(self, entries: list[dict]) -> None:
        """A job's own embeddings (those its API key trained whose token its prompt holds: params'
        `embeddings`) loaded, and every one an earlier job loaded that this job does not name unloaded:
        a key's token means its vectors only in that key's jobs."""
        wanted = {e["token"]: e["digest"] for e in entries}
        for token, digest in list(self.job_embeddings.items()):
            if wanted.get(token) != digest:
                unload_vectors(self.model, token)
                del self.job_embeddings[token]
        for e in entries:
            if e["token"] not in self.job_embeddings:
                label = f"embedding {e['name']}"
                file = self.files.stored(e["digest"], label)
                try:
                    load_vectors(self.model, file.state_dict(), e["token"], label)
                except ValueError as exc:
                    raise invalid_input(str(exc)) from None
                self.files.remember(file)  # into the disk cache only now that it has loaded
                self.job_embeddings[e["token"]] = e["digest"]

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
                same = next((files[j] for j in files if "url" in entry and loras[j].get("url") == entry["url"]), None)
                files[i] = same or self._file(i, entry)  # a URL named twice: fetched once
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
            if i in files:  # fetched or read from storage: into the disk cache now that it has loaded
                self.files.remember(files[i], needed)
            # The same file named twice (by name and by URL): one adapter, the scales add up.
            weights[resident.name] = weights.get(resident.name, 0.0) + float(entry["scale"])
        self._set(weights)
        # what the job shows (written back to its params): each URL without its query (service/lora_urls.py)
        return lora_urls.hide([{**entry, "digest": digest} for entry, digest in zip(loras, digests)])

    def _known(self, entry: dict) -> str | None:
        """The digest of `entry` when known without reading or fetching anything."""
        if entry.get("owned"):  # an API key's trained LoRA: the API resolved its digest
            return entry["digest"]
        if "url" in entry:
            path = self.files.cache.lookup(entry["url"])
            return None if path is None else "sha256:" + path.stem
        return self.files.known_digest(self.catalog.adapters[entry["name"]])

    def _file(self, i: int, entry: dict) -> AdapterFile:
        if entry.get("owned"):
            return self.files.stored(entry["digest"], f"LoRA {entry['name']}")
        if "url" in entry:
            return self.files.url(entry["url"], f"the LoRA at loras[{i}].url")
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
        problem = family_problem(state, self.model.spec.family)
        if problem:
            raise invalid_input(f"{file.label} {problem}; model {self.model.name} is a {self.model.spec.family} model")
        try:
            parts = lora_parts.read(self.model, state)
            lora_parts.check(self.model, parts)
        except Exception as exc:
            raise self._not_a_lora(file, exc) from None
        if isinstance(self.denoiser, LoraSlots):
            resident = self._swap_into_slot(file, parts, needed)
        else:
            resident = Resident(peft_name(file.digest), file.digest, file.label)
            try:
                lora_parts.load(self.model, parts, resident.name)
            except Exception as exc:
                self._forget(resident.name)
                raise self._not_a_lora(file, exc) from None
            if not self._has(resident.name):
                self._forget(resident.name)
                raise self._not_a_lora(file, None)
            self.resident[file.digest] = resident
            self.active_text.clear()  # loading changed which adapters are active
            self.denoiser.loaded()
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

    def _swap_into_slot(self, file: AdapterFile, parts: lora_parts.LoraParts, needed: set[str]) -> Resident:
        """A free slot, else the least recently used one this job does not need, with the LoRA in it."""
        used = {r.name for r in self.resident.values()}
        free = [s for s in self.slots if s not in used]
        if free:
            slot = free[0]
        else:
            digest = next((d for d in self.resident if d not in needed), None)
            if digest is None:
                raise invalid_input(f"this job names more LoRAs than model {self.model.name} has LoRA slots "
                                    f"({len(self.slots)}: `lora_slots` in the models file)")
            slot = self.resident.pop(digest).name
        try:
            self.denoiser.swap_in(parts, slot)
        except Exception as exc:
            raise self._not_a_lora(file, exc) from None
        self.active_text.clear()
        resident = self.resident[file.digest] = Resident(slot, file.digest, file.label)
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
        for te in self.model.family.text_encoders:
            self._set_text_encoder(te.encoder, weights)
        self.denoiser.set(weights)

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
