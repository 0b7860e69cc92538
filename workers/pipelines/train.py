"""Task `train`: a LoRA, an embedding or both, trained on an SD or SDXL model from the job's images.

Unlike the generation tasks it runs on no resident model: each job loads its own trainable copy of the
base (the family file's loader, without compilation, fused projections or offloading), so training
never touches the weights the worker serves with, and the copy is dropped when the job ends. The loop
itself is workers/training/ (diffusers + peft + accelerate).

1. inputs: the job's images (decoded by the worker from storage) and their captions;
2. resume: the job's last checkpoint, when an earlier worker was lost mid-job (no step before it is
   trained again); the progress says `resumed_from`;
3. train, reporting each step's loss, storing a checkpoint every `checkpoint_every` steps beside the
   job's files, and showing each validation image as the job's live preview;
4. the adapter's files and record (`Output.adapter`): the worker stores and registers them for the
   job's API key as the job ends (workers/jobs.py), and the checkpoint goes.
"""

from __future__ import annotations

import hashlib
import logging
import time

from service.catalog import ModelSpec
from service.jobs.states import Stage
from workers.errors import invalid_input
from workers.pipelines.base import Output, TaskPipeline, pixels
from workers.progress import Progress
from workers.trained import CHECKPOINT
from workers.training.base_model import trainable_copy

log = logging.getLogger("fresco.train")



def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Train(TaskPipeline):
    task = "train"
    inference = False  # runs with gradients (outside torch.inference_mode)

    def __init__(self, spec: ModelSpec, settings):
        from service.storage import storage_from_settings

        super().__init__(None)
        self.spec, self.storage = spec, storage_from_settings(settings)  # the checkpoints' store
        self.processes = settings.train_processes  # data parallel over this many processes (one GPU each)

    def plan(self, params: dict) -> list[tuple[Stage, int]]:
        """What a started job shows until its first step: preparing (a resumed job's steps start later)."""
        return [(Stage.PREPARING, params["steps"])]

    def config(self, params: dict):
        from workers.training import TrainConfig

        v = params["validation"]
        return TrainConfig(
            method=params["method"], steps=params["steps"], learning_rate=params["learning_rate"],
            rank=params["rank"], alpha=params["alpha"], resolution=params["resolution"],
            batch_size=params["batch_size"], gradient_accumulation=params["gradient_accumulation"],
            train_text_encoder=params["train_text_encoder"], caption_dropout=params["caption_dropout"],
            buckets=params["buckets"], seed=params["seed"], checkpoint_every=params["checkpoint_every"],
            validation_prompt=v["prompt"], validation_every=v["every"], validation_images=v["num_images"],
            trigger=params["trigger"] if params["method"] == "lora" else "", token=params.get("token"),
            init_token=params.get("init_token"), min_snr_gamma=params.get("min_snr_gamma"),
            noise_offset=params.get("noise_offset", 0.0))


    def run(self, params: dict, progress: Progress) -> Output:
        from workers.training import check, train
        from workers.training.checkpoint import load as load_checkpoint
        from workers.training.processes import parallel

        job_id = progress.job_id
        config = self.config(params)
        progress.preparing(Stage.PREPARING)
        resume = self._checkpoint(job_id)
        model = trainable_copy(self.spec)
        try:
            check(config, model.pipe, model.family)
            if resume is not None:  # the job says it resumed, and from where, from now on
                progress.extra["resumed_from"] = load_checkpoint(resume, config)["step"]
        except ValueError as exc:
            raise invalid_input(str(exc)) from None
        examples = [(pixels(item["image"]), item.get("caption", "")) for item in params["images"]]
        hooks = _hooks(self, progress, job_id)
        started = time.perf_counter()
        run = lambda: train(model.pipe, model.family, examples, config, hooks, resume=resume,  # noqa: E731
                            metadata=self._metadata(params))
        trained = parallel(self.processes, self.spec, examples, config, resume, run) if self.processes > 1 else run()
        log.info("trained %s (%s) on %s: %d steps in %.1fs on %d process(es)", params["name"], params["method"],
                 self.spec.name, trained.steps - trained.resumed_from, time.perf_counter() - started,
                 trained.processes)
        progress.preparing(Stage.SAVING)
        return Output(images=list(trained.validation), adapter=self._adapter(params, trained))

    def _checkpoint(self, job_id: str) -> bytes | None:
        try:
            return self.storage.get(job_id, CHECKPOINT)
        except (FileNotFoundError, KeyError):
            return None

    def _metadata(self, params: dict) -> dict[str, str]:
        return {"ss_sd_model_name": self.spec.name, "ss_output_name": params["name"],
                "ss_training_comment": f"trained by Fresco on {self.spec.name}; trigger: {params['trigger']}",
                "ss_seed": str(params["seed"]), "ss_num_train_images": str(len(params["images"]))}

    def _adapter(self, params: dict, trained) -> dict:
        """The adapter's files by digest and the record the worker registers."""
        files, record = {}, {"name": params["name"], "model": self.spec.name, "family": self.spec.family,
                             "method": params["method"], "steps": trained.steps, "rank": params["rank"],
                             "resolution": params["resolution"]}
        if trained.lora is not None:
            digest = _digest(trained.lora)
            files[digest] = trained.lora
            record.update(kind="lora", trigger=params["trigger"], digest=digest, size_bytes=len(trained.lora))
        if trained.embedding is not None:
            digest = _digest(trained.embedding)
            files[digest] = trained.embedding
            record.update(token=params["token"], embedding_digest=digest)
            if trained.lora is None:
                record.update(kind="embedding", digest=digest, size_bytes=len(trained.embedding))
        record["digests"] = sorted(files)
        return {"record": record, "files": files, "replace": params["replace"]}


def _hooks(pipeline: Train, progress: Progress, job_id: str):
    """The trainer's callbacks -> the job's progress, checkpoints and live previews."""
    from workers.training import Hooks

    class JobHooks(Hooks):
        def stage(self, name: str) -> None:
            if name != Stage.TRAINING:  # training shows itself with its first step (a resumed job's is not 1)
                progress.preparing(Stage(name))

        def step(self, step: int, total: int, loss: float) -> None:
            progress.trained(step, total, loss)  # raises JobCanceled when the job was canceled

        def checkpoint(self, step: int, data: bytes) -> None:
            pipeline.storage.put(job_id, CHECKPOINT, data)
            log.info("job %s: checkpoint at step %d (%d bytes)", job_id, step, len(data))

        def validation(self, step: int, images: list) -> None:
            if images:
                progress.image = images[0]

    return JobHooks()
