"""The random streams of a run, each a CPU generator derived from the config's seed and what the stream
is for, never the global RNG: the same seed gives the same run on any device, a resumed run can rebuild
any stream from the step it is at, and nothing a run draws disturbs another (validation images, the
worker's own generation jobs).

Streams: the LoRA's initial values, a new token's random start (no `init_token`), the batch order of
each epoch, and the draws of each micro-batch (per data-parallel process). Validation image i uses the
seed plus i, so the first is the image the seed gives.
"""

from __future__ import annotations

import torch

LORA_INIT, TOKEN_INIT, BATCH_ORDER, MICRO_BATCH = 1, 2, 3, 4


def generator(seed: int, *salt: int) -> torch.Generator:
    value = int(seed)
    for part in salt:
        value = value * 1_000_003 + int(part)
    return torch.Generator().manual_seed(value % 2**63)
