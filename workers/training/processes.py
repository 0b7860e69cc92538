"""One training job on several processes (FRESCO_TRAIN_PROCESSES=N): data parallel, through accelerate.

The worker's own process is rank 0: it runs the job's hooks (progress and cancel, checkpoints, previews)
and exports the adapter, as it does alone. It starts ranks 1..N-1 as child processes (`python -m
workers.training.processes <dir>`), each of which loads the same model (one GPU per rank: `cuda:<rank>`)
and the same examples from a temporary directory and trains its shard of every batch. accelerate joins
them through torch.distributed, from the variables torchrun would set (MASTER_ADDR, MASTER_PORT,
WORLD_SIZE, RANK, LOCAL_RANK): gloo on the CPU, NCCL on GPUs. A cancel on rank 0 stops every rank at
the same step (workers/training/trainer.py). When the run ends, however, rank 0 leaves the process
group and resets accelerate's process-wide state, so the worker's next job starts clean.

`accelerate launch --cpu --num_processes N` starts a single process in accelerate 1.16, so the ranks
are started here, as torchrun starts them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, TypeVar

log = logging.getLogger("fresco.train")
T = TypeVar("T")
CHILD_EXIT_S = 60.0  # how long rank 0 waits for the other ranks once its run has ended


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _environ(values: dict[str, str]):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _leave() -> None:
    """Rank 0 (the worker's process) out of any process group, accelerate's process-wide state reset (so the
    next run, of one process or several, starts from the environment)."""
    import torch.distributed as dist
    from accelerate.state import AcceleratorState

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    AcceleratorState._reset_state(reset_partial_state=True)


def write_job(folder: Path, spec, examples, config, resume: bytes | None) -> None:
    """What the other ranks need: the model's entry, the config, the examples (PNG, lossless), the checkpoint."""
    (folder / "spec.json").write_text(spec.model_dump_json())
    (folder / "config.json").write_text(json.dumps(dataclasses.asdict(config)))
    captions = []
    for i, (image, caption) in enumerate(examples):
        image.save(folder / f"{i}.png")
        captions.append(caption)
    (folder / "captions.json").write_text(json.dumps(captions))
    if resume is not None:
        (folder / "resume.pt").write_bytes(resume)


def parallel(processes: int, spec, examples, config, resume: bytes | None, rank0: Callable[[], T]) -> T:
    """`rank0()` (the worker's own `train(...)` call) as rank 0 of `processes`, the others started here."""
    with tempfile.TemporaryDirectory(prefix="fresco-train-") as tmp:
        write_job(Path(tmp), spec, examples, config, resume)
        common = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(processes)}
        children = [subprocess.Popen([sys.executable, "-m", "workers.training.processes", tmp],
                                     env={**os.environ, **common, "RANK": str(r), "LOCAL_RANK": str(r)})
                    for r in range(1, processes)]
        try:
            with _environ({**common, "RANK": "0", "LOCAL_RANK": "0"}):
                _leave()  # a state an earlier one-process run left would keep this process out of the group
                try:
                    return rank0()
                finally:
                    _leave()
        finally:
            for child in children:
                try:
                    child.wait(CHILD_EXIT_S)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                if child.returncode:
                    log.warning("training rank process %d exited with %s", child.pid, child.returncode)


def _rank_main(folder: Path) -> int:
    """A rank other than 0: load the model and the examples, train its shards, export nothing."""
    import torch
    from PIL import Image

    from service.catalog import ModelSpec
    from workers.training.base_model import trainable_copy
    from workers.training import TrainConfig, TrainingStopped, train

    rank = int(os.environ["LOCAL_RANK"])
    spec = ModelSpec.model_validate_json((folder / "spec.json").read_text())
    device = None
    if torch.cuda.is_available() and spec.device in ("auto", "cuda") or spec.device.startswith("cuda"):
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    model = trainable_copy(spec, device)
    captions = json.loads((folder / "captions.json").read_text())
    examples = [(Image.open(folder / f"{i}.png").convert("RGB"), c) for i, c in enumerate(captions)]
    config = TrainConfig(**json.loads((folder / "config.json").read_text()))
    resume = folder / "resume.pt"
    try:
        train(model.pipe, model.family, examples, config, resume=resume.read_bytes() if resume.exists() else None)
    except TrainingStopped:
        return 0  # rank 0 stopped the run (a cancel): nothing wrong here
    return 0


if __name__ == "__main__":
    sys.exit(_rank_main(Path(sys.argv[1])))
