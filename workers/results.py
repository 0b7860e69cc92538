"""A job's outputs as files: encoded (images on several threads when a batch has several), each carrying
its recipe (service/recipe.py) unless FRESCO_OUTPUT_METADATA is off, named (service/storage/names.py),
stored, and described for the job's `result`."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from service.recipe import Recipe
from service.storage import Storage
from service.storage.names import CONTENT_TYPES, image_name, video_name
from workers.encode import Metadata, encode_image, encode_video
from workers.pipelines.base import Output

Files = list[tuple[str, bytes]]


def metadata(recipe: Recipe | None, index: int) -> Metadata | None:
    """What output `index` of a job carries: its recipe's infotext and JSON (None: nothing)."""
    return None if recipe is None else Metadata(recipe.infotext(index), recipe.json(index))


def encode(output: Output, params: dict, png_level: int = -1, threads: int | None = None,
           recipe: Recipe | None = None) -> tuple[Files, dict]:
    """The files of one job's output and its `result` (names, not URLs: the API makes those). With a
    `recipe`, each file carries it (image i with its own seed)."""
    fmt = params.get("output_format", "png")  # a training job's validation images: PNG
    content_type = CONTENT_TYPES[fmt]
    if output.frames is not None:
        frames = output.frames
        name = video_name(fmt)
        video = {"name": name, "content_type": content_type, "width": int(frames.shape[2]),
                 "height": int(frames.shape[1]), "num_frames": int(frames.shape[0]), "fps": params["fps"],
                 "seed": params["seed"]}
        return [(name, encode_video(frames, params["fps"], fmt, metadata(recipe, 0)))], {"video": video}
    files, images = [], []
    for i, img in enumerate(output.images):
        name = image_name(i, fmt)
        files.append((name, encode_image(img, fmt, png_level, threads, metadata(recipe, i))))
        images.append({"name": name, "content_type": content_type, "width": img.width, "height": img.height,
                       "seed": (params["seed"] + i) % 2**32})
    return files, {"images": images}


class Encoder:
    """Encodes the outputs of a batch: one job on the calling thread, several jobs on a small pool (zlib,
    libjpeg and libwebp release the GIL)."""

    def __init__(self, png_level: int = -1):
        self.png_level = png_level
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def encode_all(self, jobs: list[tuple[Output, dict, Recipe | None]],
                   threads: int | None = None) -> list[tuple[Files, dict, float]]:
        """Each job's files and result, with the seconds its encoding took. A job: (output, params, recipe).
        `threads`: how many threads one large PNG may use (None: the encoder's choice; 1: every job on this
        thread, one thread each, as the worker's finishing stage encodes while the next job's inference
        runs, which must keep its cores)."""

        def one(job: tuple[Output, dict, Recipe | None], threads: int | None):
            output, params, recipe = job
            t = time.perf_counter()
            files, result = encode(output, params, self.png_level, threads, recipe)
            return files, result, time.perf_counter() - t

        images = sum(len(job[0].images) for job in jobs)
        if len(jobs) <= 1 or images <= 1 or threads == 1:
            return [one(job, threads) for job in jobs]
        with self._lock:  # several finishing threads may get here first at once
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)),
                                                thread_name_prefix="fresco-encode")
        return list(self._pool.map(lambda job: one(job, 1), jobs))


def store(storage: Storage, job_id: str, files: Files) -> float:
    """Write a job's files; the seconds it took. An OSError (a full disk, a lost mount) leaves no
    partial file behind (each store writes atomically) and is the caller's to report."""
    t = time.perf_counter()
    for name, data in files:
        storage.put(job_id, name, data)
    return time.perf_counter() - t
