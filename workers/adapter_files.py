"""Where an adapter's weights come from: a models-file source or a request's URL -> a state dict and
the content digest a job reports.

- A named adapter (service/catalog/addons.py `adapters:`): a local .safetensors file, a directory holding one
  (or `weight_name`), a hub id (`weight_name`, default `pytorch_lora_weights.safetensors`, fetched by
  huggingface_hub into its own cache), or `tiny` (built offline, workers/tiny_adapters.py).
- A trained adapter (service/adapter_registry.py), by digest: read from storage into the same disk cache.
- A URL (FRESCO_ALLOW_ADAPTER_URLS): fetched once through the same guard as input images
  (service/fetch.py: public addresses only, every redirect checked, a size and a time cap) into a disk
  cache keyed by content digest, with a byte budget and least-recently-used eviction. A later job with
  the same URL reads the cached file (the URL -> digest index survives restarts). A file enters the cache
  only once it has loaded (`remember`): a refused one never takes a good one's place.

Safetensors only, never a pickle: a pickle suffix is refused before anything is fetched or opened, and
bytes are parsed as safetensors (a header of tensor names and shapes, then raw data: nothing runs) or
refused. The digest is the SHA-256 of the file's bytes: `sha256:<hex>`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from service import adapter_registry
from service.catalog import PICKLE_SUFFIXES, AdapterSpec, adapter_url_problem
from service.fetch import FetchRejected, fetch_public_url
from service.settings import Settings
from workers import metrics
from workers.errors import invalid_input

log = logging.getLogger("fresco.adapters")
HUB_DEFAULT_WEIGHT = "pytorch_lora_weights.safetensors"
# An adapter's JSON header, bounded before it is parsed: a tensor's entry is ~100-200 bytes and the largest
# shared LoRAs (LoHa/LoCon on SDXL, both text encoders) hold under 10,000 tensors, with some kilobytes of
# trainer metadata. safetensors itself allows 100 MB, which parses for seconds into hundreds of MB.
MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_TENSORS = 20_000
STORED = "fresco-storage:"  # the cache index's key of a trained adapter's file: this, then its digest


@dataclass(frozen=True)
class AdapterFile:
    digest: str  # "sha256:<hex>" of the file's bytes
    label: str  # how messages name it: the adapter's name, or "the LoRA at loras[i].url"
    path: Path | None = None  # the file (a models-file adapter)
    data: bytes | None = None  # or its bytes (fetched, read from the URL cache, or built: the tiny profile)
    uncached: str | None = None  # the disk cache's key of bytes not in it yet (in once they load: `remember`)

    def state_dict(self) -> dict:
        import safetensors.torch

        try:
            if self.path is not None:
                return safetensors.torch.load_file(str(self.path), device="cpu")
            return safetensors.torch.load(self.data)
        except Exception as exc:  # safetensors' own errors: a truncated or inconsistent file
            raise invalid_input(f"{self.label} is not a readable safetensors file ({type(exc).__name__})") from None


def safetensors_problem(head: bytes, size: int) -> str | None:
    """Why bytes that begin with `head` (at least 8 + the header) and are `size` long are no safetensors
    file, from its header alone: an 8-byte little-endian length, then that much JSON, an object."""
    if len(head) < 8:
        return "is too short to be a safetensors file"
    (length,) = struct.unpack("<Q", head[:8])
    if length < 2 or 8 + length > size:
        return "is not a safetensors file (only .safetensors adapters are loaded, never pickles)"
    if length > MAX_HEADER_BYTES:
        return f"has a safetensors header of {length} bytes, more than an adapter's ({MAX_HEADER_BYTES})"
    text = head[8:8 + length]
    if len(text) < length:
        return None  # the caller gave too little to check the JSON; the loader parses it
    # Each tensor's entry is a JSON object: more braces than that many tensors, and it is refused unparsed.
    if text.count(b"{") > MAX_TENSORS + 1:
        return f"holds more than {MAX_TENSORS} tensors, more than an adapter has"
    try:
        header = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than the parser follows
        return "is not a safetensors file (its header is not JSON)"
    if not isinstance(header, dict) or not all(isinstance(v, dict) for v in header.values()):
        return "is not a safetensors file (its header is not an object of tensors)"
    return None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def check_file(path: Path, label: str) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise invalid_input(f"{label} is a pickle file, which can run code when loaded; give a .safetensors file")
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) == 8:
            head += f.read(min(struct.unpack("<Q", head)[0], MAX_HEADER_BYTES))
    problem = safetensors_problem(head, path.stat().st_size)
    if problem:
        raise invalid_input(f"{label} {problem}")


def index_key(key: str) -> str:
    """How `urls.json` names a cache key: a URL by its SHA-256, so the file never holds a URL (whose query
    may be a token), and the same path with another token is fetched anew; a stored file's key as is."""
    return key if key.startswith(STORED) else "url-sha256:" + hashlib.sha256(key.encode()).hexdigest()


class UrlCache:
    """Fetched adapter files on disk, `<digest hex>.safetensors`, within a byte budget: the least
    recently used files leave first (a file's mtime is its last use). `urls.json` maps each key (by
    `index_key`: a URL's digest, or a stored file's key) -> the file's digest."""

    def __init__(self, root: Path, budget: int):
        self.root, self.budget = Path(root), budget
        self._lock = threading.Lock()
        self._index: dict[str, str] | None = None

    def _index_path(self) -> Path:
        return self.root / "urls.json"

    def _load_index(self, fresh: bool = False) -> dict[str, str]:
        """The URL -> digest index; `fresh`: read again from disk (other workers on this host share it)."""
        if self._index is None or fresh:
            try:
                self._index = json.loads(self._index_path().read_text())
            except (OSError, ValueError):
                self._index = {}
            if any("://" in key for key in self._index):  # an older index, by URL: its tokens leave the disk now
                self._index = {key: digest for key, digest in self._index.items() if "://" not in key}
                self._save_index()
        return self._index

    def _save_index(self) -> None:
        tmp = self._index_path().with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self._index))
        os.replace(tmp, self._index_path())

    def path_of(self, digest: str) -> Path:
        return self.root / f"{digest.removeprefix('sha256:')}.safetensors"

    def lookup(self, url: str) -> Path | None:
        """The cached file of `url`, marked as just used; None when it was never fetched or was evicted."""
        key = index_key(url)
        with self._lock:
            digest = self._load_index().get(key) or self._load_index(fresh=True).get(key)
            if digest is None:
                return None
            path = self.path_of(digest)
            try:
                os.utime(path)
            except OSError:
                return None
            return path

    def store(self, url: str, data: bytes, keep: set[str] = frozenset()) -> tuple[str, Path]:
        """Write `data` (fetched from `url`) into the cache; evict least recently used files beyond the
        budget, never one in `keep` (digests the current job uses)."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            path = self.path_of(digest)
            if not path.exists():
                tmp = path.with_suffix(f".{os.getpid()}.part")
                tmp.write_bytes(data)
                os.replace(tmp, path)
            else:
                os.utime(path)
            index = self._load_index(fresh=True)  # another worker's entries are kept
            index[index_key(url)] = digest
            self._evict(keep | {digest})
            self._save_index()
        return digest, path

    def _evict(self, keep: set[str]) -> None:
        files = []
        for path in self.root.glob("*.safetensors"):
            try:  # another worker sharing the directory may delete a file meanwhile
                stat = path.stat()
            except FileNotFoundError:
                continue
            files.append((stat.st_mtime, stat.st_size, path))
        files.sort()
        total = sum(size for _, size, _ in files)
        for _, size, path in files:
            if total <= self.budget:
                break
            digest = "sha256:" + path.stem
            if digest in keep:
                continue
            total -= size
            path.unlink(missing_ok=True)
            for url in [u for u, d in self._index.items() if d == digest]:
                del self._index[url]
            log.info("adapter cache: evicted %s (over the %d-byte budget)", digest, self.budget)

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("*.safetensors")) if self.root.exists() else 0


class AdapterFiles:
    """Named and URL adapters -> AdapterFile, each file hashed once per process."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.cache = UrlCache(settings.adapter_cache_path, settings.adapter_cache_bytes)
        self._digests: dict[tuple, str] = {}  # (path, size, mtime) -> digest
        self._tiny: dict[str, AdapterFile] = {}
        self._storage = None  # where trained adapters are (built on first use)

    def named(self, spec: AdapterSpec) -> AdapterFile:
        if spec.is_tiny:
            return self._tiny_file(spec.name)
        path = self._local_path(spec)
        check_file(path, f"adapter {spec.name}")
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in self._digests:
            self._digests[key] = sha256_file(path)
        return AdapterFile(self._digests[key], f"adapter {spec.name}", path=path)

    def known_digest(self, spec: AdapterSpec) -> str | None:
        """The digest of `spec` when its file was hashed before (and has not changed), else None."""
        if spec.is_tiny:
            return self._tiny[spec.name].digest if spec.name in self._tiny else None
        try:
            path = self._local_path(spec, download=False)
            stat = path.stat()
        except Exception:  # not there yet (a hub file not downloaded): unknown
            return None
        return self._digests.get((str(path), stat.st_size, stat.st_mtime_ns))

    def _tiny_file(self, name: str) -> AdapterFile:
        if name not in self._tiny:
            import safetensors.torch

            from workers import tiny_adapters

            data = safetensors.torch.save(tiny_adapters.adapter(name))
            self._tiny[name] = AdapterFile("sha256:" + hashlib.sha256(data).hexdigest(), f"adapter {name}", data=data)
        return self._tiny[name]

    def _local_path(self, spec: AdapterSpec, download: bool = True) -> Path:
        source = Path(spec.source)
        if source.is_file():
            return source
        if source.is_dir():
            if spec.weight_name:
                return source / spec.weight_name
            found = sorted(source.glob("*.safetensors"))
            if len(found) != 1:
                raise ValueError(f"adapter {spec.name}: {spec.source} holds {len(found)} .safetensors files; "
                                 f"set `weight_name` in the models file")
            return found[0]
        if source.is_absolute() or spec.source.startswith("."):
            raise ValueError(f"adapter {spec.name}: {spec.source} does not exist")
        from huggingface_hub import hf_hub_download

        # Once downloaded, huggingface_hub answers from its cache (offline too, with HF_HUB_OFFLINE=1).
        return Path(hf_hub_download(spec.source, spec.weight_name or HUB_DEFAULT_WEIGHT,
                                    local_files_only=not download))

    def stored(self, digest: str, label: str) -> AdapterFile:
        """A trained adapter's file (service/adapter_registry.py), by its digest: from the disk cache when
        read before, else from storage (checked against the digest), for the cache once it loads (`remember`)."""
        key = STORED + digest
        path = self.cache.lookup(key)
        if path is not None:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                data = None
            if data is not None:
                metrics.ADAPTER_CACHE.labels("disk", "hit").inc()
                return AdapterFile(digest, label, data=data)
        metrics.ADAPTER_CACHE.labels("disk", "miss").inc()
        if self._storage is None:
            from service.storage import storage_from_settings

            self._storage = storage_from_settings(self.settings)
        try:
            data = self._storage.get(*adapter_registry.location(digest))
        except (FileNotFoundError, KeyError):
            raise invalid_input(f"{label} is gone from storage (deleted meanwhile)") from None
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise invalid_input(f"{label}: the stored file does not match its digest")
        problem = safetensors_problem(data[:8 + MAX_HEADER_BYTES], len(data))
        if problem:
            raise invalid_input(f"{label} {problem}")
        return AdapterFile(digest, label, data=data, uncached=key)

    def url(self, url: str, label: str) -> AdapterFile:
        """The file at `url`: from the disk cache when it was fetched before, else fetched (guarded), for the
        cache once it loads (`remember`)."""
        problem = adapter_url_problem(url, self.settings.image_url_schemes)
        if problem:
            raise invalid_input(f"{label} {problem}")
        path = self.cache.lookup(url)
        if path is not None:
            try:  # read now: another worker sharing the cache may evict the file before it loads
                data = path.read_bytes()
            except FileNotFoundError:
                data = None
            if data is not None:
                metrics.ADAPTER_CACHE.labels("disk", "hit").inc()
                return AdapterFile("sha256:" + path.stem, label, data=data)
        metrics.ADAPTER_CACHE.labels("disk", "miss").inc()
        s = self.settings
        try:
            data = asyncio.run(fetch_public_url(url, schemes=s.image_url_schemes,
                                                allowed_networks=s.image_url_allow_networks,
                                                max_bytes=s.max_adapter_bytes, timeout_s=s.adapter_url_timeout_s,
                                                accept="application/octet-stream"))
        except FetchRejected as exc:
            raise invalid_input(f"{label} was refused: {exc}") from None
        metrics.ADAPTER_FETCH_BYTES.inc(len(data))
        problem = safetensors_problem(data[:8 + MAX_HEADER_BYTES], len(data))
        if problem:
            raise invalid_input(f"{label} {problem}")
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        log.info("fetched %s: %d bytes, %s", label, len(data), digest)
        return AdapterFile(digest, label, data=data, uncached=url)

    def remember(self, file: AdapterFile, keep: set[str] = frozenset()) -> None:
        """Into the disk cache, once it has loaded: the file `url` or `stored` returned uncached. A file
        refused (not a LoRA for the model, unreadable) never enters it, so never evicts a good one."""
        if file.uncached is not None and file.data is not None:
            self.cache.store(file.uncached, file.data, keep)
