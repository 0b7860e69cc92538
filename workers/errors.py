"""The one exception a worker raises on purpose: a job that cannot run, with the code and message
the client sees (workers/jobs.py `failure_for` maps everything else)."""

from __future__ import annotations

from service.jobs.states import ErrorCode


class JobFailed(Exception):
    """A job that cannot run, with the error code and message the client sees."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def invalid_input(message: str) -> JobFailed:
    return JobFailed(ErrorCode.INVALID_INPUT, message)
