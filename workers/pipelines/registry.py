"""Task name -> pipeline class: the class each row of the task table names (service/tasks.py)."""

from __future__ import annotations

from service.tasks import TASKS, load
from workers.pipelines.base import TaskPipeline

PIPELINES: dict[str, type[TaskPipeline]] = {name: load(task.pipeline) for name, task in TASKS.items()}
