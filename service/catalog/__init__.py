"""The model catalogue: which models serve which task, where their weights come from, how to load them.

Read by the API (validation, `GET /models`) and by workers (what to load), so it is declarative and
imports no torch. `models.py` is one model's entry, `addons.py` the LoRAs, embeddings and ControlNets
made for them, `models_file.py` the whole file (or the `tiny` profile) read and checked.
"""

from service.catalog.addons import (CONTROL_KINDS, CONTROL_SCALE, LORA_SCALE, MAX_CONTROLS, PREPROCESSORS,
                                    AdapterSpec, ControlNetSpec, adapter_url_problem)
from service.catalog.models import CHECKPOINT_SUFFIXES, PICKLE_HINT, PICKLE_SUFFIXES, ModelSpec, native_size
from service.catalog.models_file import Catalog, load_catalog, tiny_catalog

__all__ = ["CONTROL_KINDS", "CONTROL_SCALE", "LORA_SCALE", "MAX_CONTROLS", "PREPROCESSORS", "AdapterSpec",
           "ControlNetSpec", "adapter_url_problem", "CHECKPOINT_SUFFIXES", "PICKLE_HINT", "PICKLE_SUFFIXES",
           "ModelSpec", "native_size", "Catalog", "load_catalog", "tiny_catalog"]
