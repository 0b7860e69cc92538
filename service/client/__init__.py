"""Fresco's Python client: `Client` (blocking) and `AsyncClient` (asyncio) over httpx, a typed `Job`, typed
events and one error class per status of the contract's error table. It imports httpx and the standard
library only (never FastAPI, Redis or torch), so it installs and imports anywhere. docs/client.md shows it.

    from service.client import Client

    with Client("http://127.0.0.1:8000") as fresco:
        job = fresco.generate("turbo", prompt="a lighthouse at dusk", width=512, height=512)
        fresco.download(job, "out/")
"""

from service.client.aio import AsyncClient
from service.client.errors import (APIConnectionError, AuthenticationError, BadRequestError, ConflictError, FrescoError,
                                   JobCanceled, JobError, JobFailed, NotFoundError, PayloadTooLargeError,
                                   RateLimitError, ServerError, UnavailableError, ValidationError)
from service.client.sync import Client
from service.client.types import (Adapter, AdapterList, DoneEvent, ErrorInfo, Event, Job, Output, Progress,
                                  ProgressEvent)

__all__ = [
    "Client", "AsyncClient", "Job", "Output", "Progress", "ErrorInfo", "Event", "ProgressEvent", "DoneEvent",
    "Adapter", "AdapterList",
    "FrescoError", "BadRequestError", "AuthenticationError", "NotFoundError", "ConflictError", "PayloadTooLargeError",
    "ValidationError", "RateLimitError", "UnavailableError", "ServerError", "APIConnectionError", "JobError",
    "JobFailed", "JobCanceled",
]
