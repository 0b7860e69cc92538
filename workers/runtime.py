"""The resident models and task pipelines of one worker process: loaded once at start, warmed up,
then used by every job (workers/jobs.py). Nothing is loaded per job, but for a task whose row says it
is not resident (`train`: each job loads its own trainable copy of its model)."""

from __future__ import annotations

import logging
import time

import torch

from service.catalog import Catalog, ModelSpec
from service.catalog.models import BUILTIN_UPSCALER
from service.families import FAMILIES
from service.jobs.heartbeats import serves
from service.settings import Settings
from service.tasks import TASKS, by_priority
from workers import metrics
from workers.adapter_files import AdapterFiles
from workers.control import load_controls
from workers.hires import load_upscalers
from workers.loras import Loras
from workers.models import LoadedModel, freeze_compiled, load_model
from workers.pipelines.base import TaskPipeline
from workers.pipelines.registry import PIPELINES
from workers.progress import Progress

log = logging.getLogger("fresco.runtime")


class Runtime:
    """The models this worker serves (`FRESCO_WORKER_MODELS`, else every model of `FRESCO_WORKER_TASKS`),
    and one task pipeline per task and model, sharing the model's modules."""

    def __init__(self, settings: Settings, catalog: Catalog):
        self.settings, self.catalog = settings, catalog
        self.models: dict[str, LoadedModel] = {}
        self.pipelines: dict[tuple[str, str], TaskPipeline] = {}

    def plan(self) -> list[tuple[str, str]]:
        """The (task, model) pairs this worker serves, in task order. The built-in `lanczos` upscaler (no
        weights, a few CPU milliseconds) goes with every worker that serves `upscale`, named or not, so a
        deployment that names its models serves upscale (and /readyz sees it) as it did every other task."""
        wanted = self.settings.worker_models
        unknown = [name for name in wanted if name not in self.catalog.models]
        if unknown:
            raise ValueError(f"FRESCO_WORKER_MODELS names {unknown}, which the models file does not have "
                             f"(it has {sorted(self.catalog.models)})")
        return [(task, name) for task in self.settings.worker_tasks for name in self.catalog.models_for(task)
                if not wanted or name in wanted or name == BUILTIN_UPSCALER]

    def load(self) -> "Runtime":
        files = AdapterFiles(self.settings)
        for task, name in self.plan():  # first: load each model once
            if not TASKS[task].resident:  # a training job loads its own copy of the model, per job
                self.pipelines[(task, name)] = PIPELINES[task](self.catalog.spec(name), self.settings)
            elif name not in self.models:
                takes_loras = self._takes_loras(name)
                model = self.models[name] = load_model(self.catalog.spec(name), loras=takes_loras)
                metrics.MODEL_LOAD_SECONDS.labels(name).set(model.load_s)
                metrics.MODEL_LOADS.labels(name).inc()
                if FAMILIES[model.spec.family].adapters and model.spec.memory != "minimal":
                    model.loras = Loras(model, self.catalog, files, self.settings.worker_max_loras)
                    model.loras.load_embeddings(self.catalog.adapters_for(name, "embedding"))
                    if model.spec.compile and takes_loras:
                        model.loras.prepare_slots(model.spec.lora_rank, model.spec.lora_slots)  # before warm-up
        served = self.plan()
        load_controls(self.catalog, self.models, served)  # after the LoRA slots: control pipelines share them
        load_upscalers(self.catalog, self.models)  # what a hires pass may name
        for task, name in served:
            if TASKS[task].resident:
                self.pipelines[(task, name)] = PIPELINES[task](self.models[name])
        if self.settings.worker_batch_size > 1:
            # A batch decodes (and img2img encodes) one image at a time: the VAE works at full image
            # resolution, so a whole batch at once only adds memory (and, on a CPU, cache misses:
            # without this a batch of 16 tiny Turbo jobs ran 0.6x as fast as one at a time, with it 1.5x).
            for model in self.models.values():
                for pipe in (model.pipe, model.refiner):
                    if pipe is not None and getattr(pipe, "vae", None) is not None:
                        pipe.vae.enable_slicing()
        return self

    def _takes_loras(self, name: str) -> bool:
        """Whether requests may bring LoRAs for model `name`: the models file lists some that fit it, or
        URL adapters are on (for a kind of model LoRAs exist for)."""
        spec = self.catalog.spec(name)
        if not any(TASKS[task].adapters for task in spec.tasks) or spec.memory == "minimal":
            return False
        return bool(self.catalog.adapters_for(name, "lora")) or self.settings.allow_adapter_urls

    def warm_up(self) -> "Runtime":
        """Run each pipeline once per size bucket (and batch size), so the first request pays no
        compilation, autotuning or lazy initialisation. Models with `compile` always warm up."""
        compiled = False
        for (task, name), pipeline in self.pipelines.items():
            if not TASKS[task].resident:
                continue
            spec = self.catalog.spec(name)
            if self.settings.worker_warmup or spec.compile:
                seconds = warm_up(pipeline, spec, self.settings.worker_batch_size)
                log.info("warmed up %s for %s in %.2fs", name, task, seconds)
                compiled = compiled or spec.compile
        if compiled:
            freeze_compiled()
        return self

    def pipeline(self, task: str, model: str) -> TaskPipeline | None:
        return self.pipelines.get((task, model))

    @property
    def tasks(self) -> list[str]:
        return sorted({task for task, _ in self.pipelines})

    @property
    def serves(self) -> list[str]:
        return sorted(serves(task, model) for task, model in self.pipelines)

    def queues(self) -> list[tuple[str, str]]:
        """(task, model) pairs in the order the worker drains their queues: short jobs first."""
        order = by_priority(self.tasks)
        return sorted(self.pipelines, key=lambda pair: order.index(pair[0]))


def warm_up(pipeline: TaskPipeline, spec: ModelSpec, batch_size: int = 1) -> float:
    """Run `pipeline` once per size bucket (and, with batching, at the largest batch too, so the
    compiled blocks take a dynamic batch dimension); the seconds it took. Then `freeze_compiled()`."""
    started = time.perf_counter()
    buckets = [tuple(b) for b in spec.buckets] or [pipeline.default_size()]
    batchable = pipeline.batch_key(pipeline.warmup_params(*buckets[0])) is not None
    for width, height in buckets:
        for batch in sorted({1, batch_size}) if batchable else [1]:
            params = pipeline.warmup_params(width, height)
            items = [dict(params, seed=i) for i in range(batch)]
            with torch.inference_mode():
                pipeline.run_batch(items, Progress(lambda state: False, pipeline.plan(params)))
    return time.perf_counter() - started
