"""Training checkpoints: what a run needs to go on at step k+1 exactly as if it had never stopped.

A checkpoint is the `torch.save` bytes of a dict of plain data only (tensors, ints, floats, strings,
lists, dicts, and the bools/None of the optimizer's settings), so that
`torch.load(io.BytesIO(data), weights_only=True)` reads it without running any pickled code:

- `format`, `step`, and the data order: `epoch` and `position` (batches of that epoch already drawn);
- `config`: the training fields as JSON (a resume must agree on them: checkpoints of another job's
  settings are refused);
- `weights`: every trainable tensor by name (`unet.<peft name>`, `text_encoder.<…>`, the embedding rows),
  on the CPU, float32;
- `optimizer` (its state dict, on the CPU) and `scaler` (fp16's loss scaler, when there is one);
- `rng`: the torch CPU RNG state and, on CUDA, each device's.

The random draws of the steps themselves need no state (objective.py derives them from the step).
"""

from __future__ import annotations

import io
import json

import torch

FORMAT = "fresco-training-checkpoint/1"


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_cpu(v) for v in value]
    return value


def save(step: int, epoch: int, position: int, config, weights: dict[str, torch.Tensor], optimizer,
         scaler=None) -> bytes:
    state = {
        "format": FORMAT,
        "step": int(step),
        "epoch": int(epoch),
        "position": int(position),
        "config": json.dumps(config.training_fields(), sort_keys=True, ensure_ascii=False),
        "weights": {name: t.detach().to("cpu", torch.float32).clone() for name, t in weights.items()},
        "optimizer": _to_cpu(optimizer.state_dict()),
        "rng": {"cpu": torch.get_rng_state()},
    }
    if scaler is not None:
        state["scaler"] = _to_cpu(scaler.state_dict())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["rng"]["cuda"] = list(torch.cuda.get_rng_state_all())
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def load(data: bytes, config) -> dict:
    """The checkpoint in `data`, checked to be one of this module's for a run of `config`'s settings."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"resume: not a training checkpoint ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"resume: not a training checkpoint of format {FORMAT}")
    saved = json.loads(state["config"])
    wanted = json.loads(json.dumps(config.training_fields(), sort_keys=True, ensure_ascii=False))
    differ = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    if differ:
        raise ValueError(f"resume: the checkpoint was trained with other settings ({', '.join(differ)}); "
                         f"resume with the settings it was made with")
    return state


def restore_weights(state: dict, weights: dict[str, torch.Tensor]) -> None:
    saved = state["weights"]
    if set(saved) != set(weights):
        missing, extra = sorted(set(weights) - set(saved)), sorted(set(saved) - set(weights))
        raise ValueError(f"resume: the checkpoint's tensors do not match this run's (missing {missing[:3]}, "
                         f"unexpected {extra[:3]})")
    with torch.no_grad():
        for name, param in weights.items():
            param.copy_(saved[name].to(param.device, param.dtype))


def restore_rng(state: dict) -> None:
    rng = state.get("rng", {})
    if "cpu" in rng:
        torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        states = rng["cuda"][:torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)
