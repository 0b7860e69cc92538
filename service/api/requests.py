"""The request body of `POST /generate`: the strict union, tagged by `task`, of the request class each
row of the task table names (service/tasks.py) for that route, in the table's order; `POST /train`'s
body is its row's class alone."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import BaseModel, Field, TypeAdapter

from service.api.schemas import image_fields
from service.tasks import GENERATE_TASKS, TASKS, load

# Task name -> its request class (each class's `task` Literal is its name).
REQUESTS: dict[str, type[BaseModel]] = {name: load(task.request) for name, task in TASKS.items()}
# POST /generate's tasks (a training job comes through POST /train).
GenerateRequest = Annotated[Union[tuple(REQUESTS[t] for t in GENERATE_TASKS)],  # type: ignore[valid-type]
                            Field(discriminator="task")]
generate_adapter: TypeAdapter[Any] = TypeAdapter(GenerateRequest)
# Task name -> the paths of its input-image fields ("image", "control[].image").
IMAGE_FIELDS: dict[str, tuple[str, ...]] = {name: image_fields(cls) for name, cls in REQUESTS.items()}


def takes_image(task: str) -> bool:
    """Whether `task`'s request has an input image of its own (not one inside a ControlNet entry)."""
    return any("." not in path for path in IMAGE_FIELDS[task])
