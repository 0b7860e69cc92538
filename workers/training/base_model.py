"""The model a training job trains: its own copy of the base, loaded per job (and per rank)."""

from __future__ import annotations

from service.catalog import ModelSpec


def trainable_copy(spec: ModelSpec, device: str | None = None):
    """A trainable copy of a base model (a LoadedModel): its models-file entry as served, but for what only
    inference wants (a refiner, compiled blocks, fused projections, offloading); `device`: another rank's GPU."""
    from workers.models import load_model

    update = {"compile": False, "fuse_qkv": False, "memory": "default", "channels_last": False, "refiner": None}
    if device is not None:
        update["device"] = device
    return load_model(spec.model_copy(update=update))
