"""The recipe a worker's outputs carry (service/recipe.py builds it; workers/encode.py writes it into each
file), unless FRESCO_OUTPUT_METADATA is off.

What the worker adds is what only it knows: where each loaded model's weights came from, worked out once
per model. A hub id with the revision the local hub cache resolved it to; a single checkpoint file (or a
VAE or refiner file) with the SHA-256 of its bytes; a local directory by its path; `tiny` as "tiny". A
checkpoint file's digest (gigabytes: seconds) is computed on a background thread from worker start, so no
start waits for it; the first job that needs it before it is ready waits for the rest. And per job: the
parameters as the worker ran them (the LoRAs with their digests, workers/loras.py) and the embeddings
whose tokens its prompts hold, with their digests.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from service.recipe import Recipe
from workers.adapter_files import sha256_file

log = logging.getLogger("fresco.recipe")

_DIGESTS: dict[tuple, str] = {}  # (path, size, mtime) -> "sha256:<hex>": a file shared by models is read once
_DIGESTS_LOCK = threading.Lock()


def file_digest(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _DIGESTS_LOCK:
        known = _DIGESTS.get(key)
    if known is None:
        known = sha256_file(path)
        with _DIGESTS_LOCK:
            _DIGESTS[key] = known
    return known


def hub_revision(repo_id: str) -> str | None:
    """The commit the local hub cache resolves `repo_id` to (what `from_pretrained` loaded), or None."""
    try:
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name

        ref = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "refs" / "main"
        return ref.read_text().strip() or None
    except Exception:  # not cached there (a custom cache_dir), not readable: unknown
        return None


def describe_source(source: str) -> dict:
    """Where weights came from, as a recipe says it."""
    if source == "tiny" or source.startswith("tiny:"):
        return {"source": source}  # the tiny profile: random weights built from fixed seeds (tiny:pai too)
    path = Path(source)
    if path.is_file():
        return {"source": source, "digest": file_digest(path)}
    if path.is_dir() or path.is_absolute() or source.startswith("."):
        return {"source": source}
    return {"source": source, "revision": hub_revision(source)}


def describe_model(loaded) -> dict:
    """A loaded model (workers/models.py LoadedModel) as a recipe names it."""
    spec = loaded.spec
    out = {"name": spec.name, "kind": spec.kind, **describe_source(spec.source)}
    if spec.config:
        out["config"] = describe_source(spec.config)
    if spec.variant:
        out["variant"] = spec.variant
    out["dtype"] = str(loaded.dtype).removeprefix("torch.")
    for part in ("refiner", "vae"):
        value = getattr(spec, part)
        if value:
            out[part] = describe_source(value)
    return out


def describe_upscaler(spec) -> dict:
    """An upscaler (no LoadedModel: workers/upscalers.py) as a recipe names it: its weights and factor."""
    builtin = spec.source == "lanczos"  # Pillow's filter (service.catalog.models.BUILTIN_UPSCALER)
    source = {"source": spec.source} if builtin else describe_source(spec.source)
    return {"name": spec.name, "kind": spec.kind, **source, "scale": spec.scale}


class Recipes:
    """The recipes of one worker's jobs. `start()` describes every loaded model on a background thread."""

    def __init__(self, runtime):
        self.runtime = runtime
        self._models: dict[str, Future] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def start(self) -> "Recipes":
        for name in self.runtime.models:
            self._future(name)
        return self

    def _future(self, name: str) -> Future:
        with self._lock:
            future = self._models.get(name)
            if future is None:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fresco-recipe")
                loaded = self.runtime.models.get(name)  # none for an upscaler (the `upscale` task's model)
                future = self._models[name] = (
                    self._pool.submit(describe_model, loaded) if loaded is not None
                    else self._pool.submit(describe_upscaler, self.runtime.catalog.spec(name)))
        return future

    def model(self, name: str) -> dict:
        return self._future(name).result()

    def embeddings(self, name: str, params: dict) -> tuple[dict, ...]:
        """The embeddings of model `name` whose tokens the job's prompts hold, with their digests."""
        loaded = self.runtime.models.get(name)
        if loaded is None or loaded.loras is None:
            return ()
        text = f"{params.get('prompt') or ''}\n{params.get('negative_prompt') or ''}"
        out = []
        for spec in self.runtime.catalog.adapters_for(name, "embedding"):
            if any(token in text for token in spec.token):
                digest = loaded.loras.files.known_digest(spec)
                out.append({"name": spec.name, "tokens": list(spec.token), "digest": digest})
        return tuple(out)

    def for_job(self, task: str, model: str, params: dict) -> Recipe | None:
        """The job's recipe; None (and a logged error) when it cannot be made: the outputs still count."""
        try:
            return Recipe(task, self.model(model), params, self.embeddings(model, params))
        except Exception:
            log.exception("the recipe of a %s job on %s could not be made; its outputs carry none", task, model)
            return None
