"""FRESCO_TRAIN_PROCESSES: one job on two processes (gloo on this CPU), this one rank 0 and a child rank
1 that loads the same tiny model, between plain runs in this process (the process group left,
accelerate's state reset each way). (Each rank process spends seconds importing torch and diffusers, so the
suite runs one; a cancel on rank 0 stopping every rank is checked by bench/train_cancel.py: BENCHMARKS.md
§12.)"""

from __future__ import annotations

import logging

from service.catalog import ModelSpec
from tests.workers.training.common import examples
from workers.training.base_model import trainable_copy
from workers.training import TrainConfig, train
from workers.training.processes import parallel

SPEC = ModelSpec(name="tiny-sd", kind="sd", source="tiny", device="cpu")
CONFIG = TrainConfig(steps=3, learning_rate=1e-3, rank=2, resolution=64, batch_size=2, checkpoint_every=0,
                     caption_dropout=0.0)


def run():
    model = trainable_copy(SPEC)
    data = examples(2)
    return parallel(2, SPEC, data, CONFIG, None, lambda: train(model.pipe, model.family, data, CONFIG))


def alone():
    model = trainable_copy(SPEC)
    return train(model.pipe, model.family, examples(2), CONFIG)


def test_one_process_then_two_then_one(caplog):
    """As a worker's jobs come: accelerate's process-wide state, which the one-process run leaves, is reset
    for the two-process run (else this process would train alone while rank 1 waited for it), and after."""
    caplog.set_level(logging.WARNING, "fresco.train")
    assert alone().processes == 1
    trained = run()
    assert trained.processes == 2 and trained.lora is not None and len(trained.losses) == 3
    assert not [r for r in caplog.records if "exited with" in r.getMessage()]  # rank 1 ended well
    again = alone()
    assert again.processes == 1 and again.lora is not None
