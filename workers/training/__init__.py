"""Training: LoRAs and textual-inversion embeddings for SD and SDXL models, from a few captioned images.

The library the worker's training jobs call (`POST /train`, ../shared/design/api.md "Personalisation:
training jobs"): `check(config, pipe)` before anything is fetched or queued long, `train(...)` to do it.
Modules, each for one thing:

- config.py: `TrainConfig` and `check`;
- data.py: buckets, image fitting, captions, latents encoded once, the batch order;
- text.py: captions into the UNet's conditioning as the pipelines compute it (cached when frozen);
- lora.py / lora_export.py: LoRA layers, and the kohya-layout file with its `ss_*` metadata;
- embedding.py: new tokens, their trainable vectors, the A1111-layout file;
- objective.py: the loss of a micro-batch (noise, timesteps, target, min-SNR);
- checkpoint.py: resumable checkpoints; validation.py: validation images;
- trainer.py: `Hooks`, `Trained` and `train`, the loop.
"""

from workers.training.config import TrainConfig, check
from workers.training.trainer import Hooks, Trained, TrainingStopped, train

__all__ = ["Hooks", "TrainConfig", "Trained", "TrainingStopped", "check", "train"]
