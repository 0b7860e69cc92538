"""A training job on two processes (FRESCO_TRAIN_PROCESSES=2; gloo on the CPU), canceled on rank 0 at step 2
of 50: every rank stops at that step and returns (the trainer broadcasts the stop), so rank 0 never waits
for the other. The suite runs one two-process job (tests/workers/training/test_processes.py); this checks
the cancel by hand, since each rank process spends seconds importing torch and diffusers.

    PYTHONPATH=. .venv/bin/python -m bench.train_cancel
"""

from __future__ import annotations

import logging
import time

from service.catalog import ModelSpec
from workers.training import Hooks, TrainConfig, train
from workers.training.base_model import trainable_copy
from workers.training.processes import parallel

SPEC = ModelSpec(name="tiny-sd", kind="sd", source="tiny", device="cpu")
CONFIG = TrainConfig(steps=50, learning_rate=1e-3, rank=2, resolution=64, batch_size=2, checkpoint_every=0)


class Stop(Hooks):
    def step(self, step, total, loss):
        if step == 2:
            raise KeyboardInterrupt("canceled")


def main() -> None:
    from PIL import Image

    logging.basicConfig(level=logging.WARNING)
    model = trainable_copy(SPEC)
    data = [(Image.new("RGB", (64, 64), c), "a square") for c in ((200, 0, 0), (0, 0, 200))]
    started = time.time()
    try:
        parallel(2, SPEC, data, CONFIG, None, lambda: train(model.pipe, model.family, data, CONFIG, Stop()))
    except KeyboardInterrupt:
        print(f"canceled at step 2 of 50 on rank 0: both ranks returned {time.time() - started:.1f} s after the "
              f"start (a rank that had not stopped would log 'exited with' and be killed after 60 s)")
        return
    raise SystemExit("the run was not canceled")


if __name__ == "__main__":
    main()
