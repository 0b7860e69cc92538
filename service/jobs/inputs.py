"""A job's input images in its parameters: each one the request brought (at any field: `image`, `mask`,
`control[0].image`) is replaced by an entry `{"name", "width", "height"}`, `name` being the file it is
stored as beside the job's results. The API writes them (service/api/resolve.py); the worker finds them
by this shape, reads each file back and hands the pipeline the decoded pixels under `pixels`, in memory
only. Plain data, no FastAPI, no torch.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

ENTRY_KEYS = frozenset({"name", "width", "height"})
_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def entry(name: str, width: int, height: int) -> dict:
    return {"name": name, "width": width, "height": height}


def is_entry(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == ENTRY_KEYS and isinstance(value["name"], str)


def entries(params: Any, path: str = "") -> Iterator[tuple[str, dict]]:
    """Every input-image entry in `params`, with its path (`control[0].image`), in order."""
    if is_entry(params):
        yield path, params
    elif isinstance(params, dict):
        for key, value in params.items():
            yield from entries(value, f"{path}.{key}" if path else key)
    elif isinstance(params, list):
        for i, value in enumerate(params):
            yield from entries(value, f"{path}[{i}]")


def _steps(path: str) -> list[str | int]:
    return [name if name else int(index) for name, index in _STEP.findall(path)]


def place(params: dict, path: str, value: Any) -> None:
    """Set `value` at `path` (`control[1].image`) in `params`, where its parents already are."""
    steps = _steps(path)
    target = params
    for step in steps[:-1]:
        target = target[step]
    target[steps[-1]] = value


def with_pixels(params: dict, pixels: dict[str, Any]) -> dict:
    """A copy of `params` whose entries at the paths of `pixels` carry their decoded image as `pixels`
    (the copy shares nothing that changes with `params`)."""
    if not pixels:
        return params
    out = _copy(params)
    for path, image in pixels.items():
        steps = _steps(path)
        target = out
        for step in steps:
            target = target[step]
        target["pixels"] = image
    return out


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
