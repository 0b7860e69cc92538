"""The training loop: `train(pipe, family, examples, config)` turns a freshly loaded SD or SDXL pipeline
and a few captioned images into a LoRA file, an embedding file, or both.

How a run goes:

1. preparing: the config is checked against the pipeline (config.py); new tokens go into the tokenizers
   and text encoders (embedding.py), LoRA layers into the UNet and, when asked, the text encoders
   (lora.py); trainable tensors are cast to float32; gradient checkpointing is turned on. Images are fitted
   to buckets and the VAE encodes them once; captions are tokenized once and, when no text encoder
   trains, encoded once (data.py, text.py). From then on the VAE is not run, nor are frozen encoders.
2. training: accelerate's `Accelerator` (made here: a plain process is a one-process run, and the same
   code runs data-parallel under `accelerate launch`) places the modules, runs mixed precision and
   gradient accumulation, and shards the batches. Each optimizer step is `gradient_accumulation`
   micro-batches of the objective (objective.py). After each step `hooks.step` is told the loss (averaged
   over processes); an exception it raises ends the run and leaves `train` (the worker's cancel).
   Every `checkpoint_every` steps (not at the last) `hooks.checkpoint` gets a checkpoint's bytes
   (checkpoint.py); every `validation_every` steps and at the end `hooks.validation` gets images
   (validation.py). Only the main process runs hooks, writes checkpoints, validates and exports.
3. saving: the LoRA in kohya's layout (lora_export.py) and the embedding in A1111's (embedding.py).

Determinism: the LoRA's initial values, the batch order, and every draw of a step come from generators
seeded from `config.seed` (and the step), so a run resumed from the checkpoint of step k does steps k+1…
exactly as the run that wrote it would have (same batches, noise, timesteps and dropped captions).

`pipe` is changed in place (adapters, tokens) and should be thrown away afterwards; its modules are left
in eval mode, the LoRA active and the new tokens' vectors in the embedding matrices.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from workers.training import checkpoint, embedding, lora, lora_export, objective, validation
from workers.training.config import TrainConfig, check, text_encoders
from workers.training.data import BucketBatches, LatentSet, compose_caption, encode_latents, expand_tokens, fit
from workers.training.text import Captions

MAX_GRAD_NORM = 1.0
WEIGHT_DECAY = 1e-2


class Hooks:
    """What a run tells its caller; the worker subclasses it. Called on the main process only."""

    def stage(self, name: str) -> None:
        """A run's stage begins: "preparing", "training", then "saving"."""

    def step(self, step: int, total: int, loss: float) -> None:
        """After each optimizer step (1-based). May raise to cancel: the exception leaves `train`."""

    def checkpoint(self, step: int, data: bytes) -> None:
        """Every `checkpoint_every` optimizer steps (not at the final step): `train(resume=data)` goes on."""

    def validation(self, step: int, images: list) -> None:
        """PIL images of the validation prompt, every `validation_every` steps and at the end."""


@dataclass
class Trained:
    lora: bytes | None  # .safetensors bytes, kohya-style keys + ss_* metadata (None for method "embedding")
    embedding: bytes | None  # .safetensors bytes, A1111 format (None for method "lora")
    losses: list[float]  # one per optimizer step this run did (a resumed run: from the step after its checkpoint)
    validation: list = field(default_factory=list)  # the final validation images (PIL)
    steps: int = 0  # final step reached
    resumed_from: int = 0  # 0, or the checkpoint step it resumed from
    processes: int = 1  # how many processes trained it (data parallel)


class TrainingStopped(RuntimeError):
    """A data-parallel process's view of a run its main process's hooks stopped."""


def train(pipe, family, examples: list[tuple["PIL.Image.Image", str]], config: TrainConfig,  # noqa: F821
          hooks: Hooks | None = None, resume: bytes | None = None,
          metadata: dict[str, str] | None = None) -> Trained:
    """Train `config.method` on `examples` (images and captions) with `pipe` (a freshly loaded SD or SDXL
    pipeline of `family`, weights frozen); `resume`: a checkpoint's bytes to go on from; `metadata`:
    extra `ss_*` strings for the LoRA file (e.g. ss_sd_model_name, ss_output_name)."""
    if family.name not in ("sd", "sdxl"):
        raise ValueError(f"model: training supports sd and sdxl models, not {family.name}")
    check(config, pipe, family)
    if not examples:
        raise ValueError("images: no examples to train on")
    state = checkpoint.load(resume, config) if resume is not None else None
    return _Run(pipe, family, list(examples), config, hooks or Hooks(), state, dict(metadata or {})).go()


def make_accelerator(config: TrainConfig, device: torch.device):
    """An `Accelerator` for this run. accelerate keeps one process-wide state whose mixed precision cannot
    change; a worker trains job after job, so a state left by an earlier run of another precision is
    reset (the process/distributed part of it is kept)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs, GradientAccumulationPlugin

    precision = config.mixed_precision
    if precision == "auto":
        precision = "no" if device.type != "cuda" else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    kwargs = dict(
        mixed_precision=precision, cpu=device.type == "cpu",
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=config.gradient_accumulation,
                                                                sync_with_dataloader=False),
        # SDXL's first text encoder's last layer feeds nothing (its penultimate state is used).
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    try:
        return Accelerator(**kwargs)
    except ValueError as exc:
        if "already been initialized" not in str(exc):
            raise
        AcceleratorState._reset_state(reset_partial_state=False)
        return Accelerator(**kwargs)


def optimizer_class(device: torch.device):
    """bitsandbytes' 8-bit AdamW on CUDA when it is installed, else torch's AdamW; and its name."""
    if device.type == "cuda":
        try:
            import bitsandbytes

            return bitsandbytes.optim.AdamW8bit, "bitsandbytes.optim.AdamW8bit"
        except Exception:  # not installed, or no CUDA build of it
            pass
    return torch.optim.AdamW, "torch.optim.AdamW"


class _Run:
    def __init__(self, pipe, family, examples, config: TrainConfig, hooks: Hooks, state: dict | None,
                 metadata: dict[str, str]):
        self.pipe, self.family, self.examples, self.config = pipe, family, examples, config
        self.hooks, self.state, self.metadata = hooks, state, metadata
        self.xl = family.name == "sdxl"
        self.accelerator = make_accelerator(config, pipe.unet.device)
        self.main = self.accelerator.is_main_process
        self.losses: list[float] = []
        self.step = self.epoch = self.position = 0
        self._batches = None

    def go(self) -> Trained:
        try:
            self._stage("preparing")
            self._prepare()
            self._stage("training")
            self._loop()
            images = self._validate(self.step) if self.config.validation_prompt else []
            self._stage("saving")
            lora_file, embedding_file = self._export()
            return Trained(lora=lora_file, embedding=embedding_file, losses=self.losses, validation=images,
                           steps=self.step, resumed_from=0 if self.state is None else self.state["step"],
                           processes=self.accelerator.num_processes)
        finally:
            self._close()

    # ---- preparing

    def _prepare(self) -> None:
        config, pipe, acc = self.config, self.pipe, self.accelerator
        device = acc.device
        if pipe.unet.device != device:
            pipe.to(device)
        # The frozen weights' dtype, read once: diffusers' `dtype` property walks every submodule (19-34 ms
        # on the full-size SDXL UNet), which a GPU would wait through every micro-step (BENCHMARKS.md §12).
        self.unet_dtype = pipe.unet.dtype
        pipe.set_progress_bar_config(disable=True)
        self.encoders = text_encoders(pipe, self.family)
        for module in [pipe.unet, pipe.vae] + [te for _, te, _ in self.encoders]:
            module.requires_grad_(False).eval()  # frozen, and run as in inference; what trains turns to train()

        self.rows = {}
        if config.trains_embedding:
            self.rows = embedding.add_tokens(config.new_tokens(), config.init_token, self.encoders, config.seed)
        lora_encoders = [name for name, _, _ in self.encoders] if config.trains_lora and config.train_text_encoder \
            else []
        if config.trains_lora:
            lora.add_lora(pipe.unet, [te for name, te, _ in self.encoders if name in lora_encoders], config.rank,
                          config.lora_alpha, config.seed)
        # The modules that train, by name: the UNet (LoRA), the text encoders with LoRA or new tokens.
        self.parts: dict[str, torch.nn.Module] = {}
        if config.trains_lora:
            self.parts["unet"] = pipe.unet
        for name, te, _ in self.encoders:
            if name in lora_encoders or name in self.rows:
                self.parts[name] = te
        from diffusers.training_utils import cast_training_params

        cast_training_params(list(self.parts.values()), dtype=torch.float32)
        if config.gradient_checkpointing:
            pipe.unet.enable_gradient_checkpointing()  # its activations dominate, trained or passing gradients on
            for name, module in self.parts.items():
                if name != "unet":
                    _checkpoint_text_encoder(module)
        self.weights = {f"{part}.{n}": p for part, m in self.parts.items() for n, p in m.named_parameters()
                        if p.requires_grad}

        self._prepare_data(device)

        optimizer_cls, self.optimizer_name = optimizer_class(device)
        optimizer = optimizer_cls(list(self.weights.values()), lr=config.learning_rate, betas=(0.9, 0.999),
                                  weight_decay=WEIGHT_DECAY, eps=1e-8)
        if self.state is not None:
            checkpoint.restore_weights(self.state, self.weights)
        names = list(self.parts)
        prepared = acc.prepare(*self.parts.values(), optimizer, self.loader)
        self.modules = dict(zip(names, prepared[:len(names)]))
        self.optimizer, self.loader = prepared[len(names)], prepared[len(names) + 1]
        if self.state is not None:
            self.optimizer.load_state_dict(self.state["optimizer"])
            if acc.scaler is not None and "scaler" in self.state:
                acc.scaler.load_state_dict(self.state["scaler"])
            checkpoint.restore_rng(self.state)
            self.step, self.epoch, self.position = self.state["step"], self.state["epoch"], self.state["position"]

        from diffusers import DDPMScheduler

        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.prediction = self.scheduler.config.prediction_type

    def _prepare_data(self, device) -> None:
        config = self.config
        tokens = config.new_tokens()
        self.caption_texts = [compose_caption(caption, config.caption_trigger) for _, caption in self.examples]
        texts = [expand_tokens(c, tokens) for c in self.caption_texts]
        self.captions = Captions(texts, self.encoders, self.xl)
        fitted = [fit(image, config.resolution, config.buckets) for image, _ in self.examples]
        latents = encode_latents(self.pipe.vae, fitted, device)
        if not any(name != "unet" for name in self.parts):
            self.captions.cache([te for _, te, _ in self.encoders], device)
        dataset = LatentSet(latents, [self.captions.index[t] for t in texts], [f.time_ids for f in fitted])
        self.sampler = BucketBatches(dataset, config.batch_size, config.seed)
        self.loader = torch.utils.data.DataLoader(dataset, batch_sampler=self.sampler)

    # ---- training

    def _loop(self) -> None:
        config, acc = self.config, self.accelerator
        modules = list(self.modules.values())
        for module in self.parts.values():
            module.train()
        params = list(self.weights.values())
        ga = config.gradient_accumulation
        micro = self.step * ga
        self._batches = self._batch_stream(self.epoch, self.position)
        while self.step < config.steps:
            total = 0.0
            for _ in range(ga):
                self.epoch, self.position, batch = next(self._batches)
                with acc.accumulate(*modules):
                    with acc.autocast():
                        loss = self._micro_loss(batch, micro)
                    acc.backward(loss)
                    if acc.sync_gradients:
                        acc.clip_grad_norm_(params, MAX_GRAD_NORM)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                total += acc.gather(loss.detach().float().reshape(1)).mean().item()
                micro += 1
            self.step += 1
            self.losses.append(total / ga)
            self._step_hook(self.step, self.losses[-1])
            if self.step < config.steps:
                if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                    self._checkpoint()
                if config.validation_prompt and config.validation_every and self.step % config.validation_every == 0:
                    self._validate(self.step)

    def _batch_stream(self, epoch: int, position: int):
        """(epoch, batches of it drawn, batch), endlessly, from (epoch, position) on."""
        while True:
            self.sampler.epoch = epoch
            for i, batch in enumerate(self.loader):
                if i >= position:
                    yield epoch, i + 1, batch
            epoch, position = epoch + 1, 0

    def _micro_loss(self, batch: dict, micro: int) -> torch.Tensor:
        config, device = self.config, self.accelerator.device
        latents = batch["latents"].to(device, torch.float32)
        generator = objective.micro_generator(config.seed, self.accelerator.process_index, micro)
        dropped, timesteps, noise = objective.draw(generator, latents, config.caption_dropout, config.noise_offset,
                                                   self.scheduler.config.num_train_timesteps)
        rows = torch.where(dropped, torch.zeros_like(dropped, dtype=torch.long), batch["caption"].cpu())
        unet = self.modules.get("unet", self.pipe.unet)
        encoders = [self.modules.get(name, te) for name, te, _ in self.encoders]
        dtype = self.unet_dtype

        def predict(noisy, t):
            hidden, pooled = self.captions.encode(encoders, rows, device)
            extra = {}
            if self.xl:
                extra["added_cond_kwargs"] = {"text_embeds": pooled.to(dtype),
                                              "time_ids": batch["time_ids"].to(device, dtype)}
            return unet(noisy.to(dtype), t, encoder_hidden_states=hidden.to(dtype), return_dict=False, **extra)[0]

        return objective.loss(self.scheduler, self.prediction, latents, noise.to(device), timesteps.to(device),
                              predict, config.min_snr_gamma)

    def _step_hook(self, step: int, loss: float) -> None:
        error = None
        if self.main:
            try:
                self.hooks.step(step, self.config.steps, loss)
            except BaseException as exc:  # the caller's cancel, whatever it raises
                error = exc
        if self.accelerator.num_processes > 1:  # every process stops with the main one
            from accelerate.utils import broadcast

            flag = broadcast(torch.tensor([0 if error is None else 1], device=self.accelerator.device), 0)
            if error is None and int(flag.item()):
                raise TrainingStopped(f"training stopped by the main process at step {step}")
        if error is not None:
            raise error

    def _checkpoint(self) -> None:
        if self.main:
            data = checkpoint.save(self.step, self.epoch, self.position, self.config, self.weights, self.optimizer,
                                   self.accelerator.scaler)
            self.hooks.checkpoint(self.step, data)
        self.accelerator.wait_for_everyone()

    def _validate(self, step: int) -> list:
        images = []
        if self.main:
            images = validation.images(self.pipe, self.config, list(self.parts.values()), self.accelerator.autocast)
            self.hooks.validation(step, images)
        self.accelerator.wait_for_everyone()
        return images

    # ---- saving

    def _export(self) -> tuple[bytes | None, bytes | None]:
        config = self.config
        lora_file = embedding_file = None
        if self.main and config.trains_lora:
            meta = lora_export.kohya_metadata(config, self.family.name, self.pipe.unet, self.caption_texts,
                                              self.step, self.optimizer_name, self.accelerator.mixed_precision,
                                              self.metadata)
            lora_file = lora_export.export(self.pipe.unet, [te for _, te, _ in self.encoders], meta)
        if self.main and config.trains_embedding:
            meta = {"token": config.token, "vectors": str(config.vectors), "steps": str(self.step),
                    "init_token": config.init_token or "", **self.metadata}
            embedding_file = embedding.export(self.family, self.rows, meta)
        self.accelerator.wait_for_everyone()
        return lora_file, embedding_file

    def _stage(self, name: str) -> None:
        if self.main:
            self.hooks.stage(name)

    def _close(self) -> None:
        if self._batches is not None:
            self._batches.close()
        for module in getattr(self, "modules", {}).values():
            with contextlib.suppress(Exception):
                self.accelerator.unwrap_model(module, keep_fp32_wrapper=False)  # accelerate's autocast forward off
        if getattr(self, "rows", None):
            embedding.fold(self.encoders, self.rows)
        for module in getattr(self, "parts", {}).values():
            module.eval()
        self.accelerator.free_memory()


def _checkpoint_text_encoder(encoder) -> None:
    kwargs = {"use_reentrant": False}
    if hasattr(encoder, "activation_checkpointing_enable"):  # transformers ≥ 5 (the old name warns)
        encoder.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
