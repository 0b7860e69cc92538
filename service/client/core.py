"""What `Client` and `AsyncClient` share, free of I/O: their settings, each API call as a `Call` (a request
and the parser of its answer), the retry rule, the Server-Sent Events decoder and long-poll slicing. The
two clients only send the calls, sleep and read streams, each its own way.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, urlsplit

import httpx

from service.client.errors import (APIConnectionError, ConflictError, FrescoError, RateLimitError,
                                   UnavailableError, error_from_response)
from service.client.inputs import dataset_zip, encode_inputs, train_form, train_images
from service.client.types import AdapterList, Job, Output

DEFAULT_URL = "http://127.0.0.1:8000"
MAX_WAIT_S = 60  # the longest `?wait=N` the API holds a request for
STREAM_READ_TIMEOUT_S = 60.0  # the API sends a keep-alive every 15 s: a silent minute is a dead stream
USER_AGENT = "fresco-client/1"


def env_base_url() -> str | None:
    """FRESCO_URL, the API's base URL, when set. The client is its caller's process: it reads its own
    two variables (FRESCO_URL, FRESCO_API_KEY) and nothing of the server's settings."""
    return os.environ.get("FRESCO_URL") or None


def env_api_key() -> str | None:
    return os.environ.get("FRESCO_API_KEY") or None


@dataclass(frozen=True)
class Call:
    """One API request and how to read its answer (`parse` gets the JSON body, None when there is none).
    `retry_transport`: safe to send again after the connection failed mid-way (GET, DELETE, and POST
    /generate and /train thanks to their Idempotency-Key)."""

    method: str
    path: str
    parse: Callable[[Any], Any] = lambda body: body
    json: Any = None
    content: bytes | None = None  # a body already encoded (a multipart form: its Content-Type in `headers`)
    params: dict | None = None
    headers: dict = field(default_factory=dict)
    extra_read_s: float = 0.0  # a long-poll holds the answer this much longer than an ordinary request
    retry_transport: bool = True
    retry_statuses: bool = True  # False for probes, whose 503 is the answer (not ready), not a reason to wait
    follow_redirects: bool = False  # result files: object storage answers with a 307 to a presigned URL


def job_id_of(job: Job | str) -> str:
    return job.id if isinstance(job, Job) else str(job)


def _job_path(job_id: str, suffix: str = "") -> str:
    return f"/jobs/{quote(job_id, safe='')}{suffix}"


def submit_call(task: str, params: dict, idempotency_key: str | None = None) -> Call:
    """POST /generate. The Idempotency-Key is made once per call to `submit`, so every retry of this one
    request carries the same key and the server answers them all with the one job."""
    body = {"task": task, **encode_inputs(params)}
    key = idempotency_key or str(uuid.uuid4())
    return Call("POST", "/generate", Job.from_dict, json=body, headers={"Idempotency-Key": key})


def train_call(model: str | None, name: str, images: Any, params: dict, *, captions: Any = None,
               idempotency_key: str | None = None) -> Call:
    """POST /train. A folder (or a .zip of one) goes as multipart with the `dataset` zip, so the images
    travel as they are; a list of images goes in JSON, each as an image input (`train_images`). The
    Idempotency-Key makes a retried upload the one job, as for `submit_call`. None-valued fields are left
    out (the server's default). ValueError (before anything is sent) when there are no images."""
    fields = {k: v for k, v in {"model": model, "name": name, **params}.items() if v is not None}
    headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
    if isinstance(images, (str, os.PathLike)):
        path = Path(images)
        if path.is_dir():
            zipped = dataset_zip(path, captions)
        elif path.is_file() and path.suffix.lower() == ".zip":
            if captions is not None:
                raise ValueError("captions go inside a dataset zip (same-name .txt files), not beside it")
            zipped = path.read_bytes()
        else:
            raise ValueError(f"{images}: not a folder of images nor a .zip of one (give single images as a list)")
        form = httpx.Request("POST", "http://fresco/train", data=train_form(fields),
                             files={"dataset": ("dataset.zip", zipped, "application/zip")})
        body = form.read()
        headers["Content-Type"] = form.headers["Content-Type"]
        return Call("POST", "/train", Job.from_dict, content=body, headers=headers)
    body = {**fields, "images": train_images(images, captions)}
    return Call("POST", "/train", Job.from_dict, json=body, headers=headers)


def adapters_call() -> Call:
    return Call("GET", "/adapters", AdapterList.from_dict)


def delete_adapter_call(name: str) -> Call:
    return Call("DELETE", f"/adapters/{quote(name, safe='')}", lambda body: None)


def get_call(job_id: str, wait: float | None = None) -> Call:
    seconds = wait_seconds(wait)
    return Call("GET", _job_path(job_id), Job.from_dict, params={"wait": seconds} if seconds else None,
                extra_read_s=seconds)


def cancel_call(job_id: str) -> Call:
    return Call("DELETE", _job_path(job_id), Job.from_dict)


def events_call(job_id: str, previews: bool = False) -> Call:
    return Call("GET", _job_path(job_id, "/events"), params={"previews": "true"} if previews else None,
                headers={"Accept": "text/event-stream"})


def models_call() -> Call:
    return Call("GET", "/models")


def fetch_call(url: str) -> Call:
    """A result file by its absolute URL (as the JobView gives it) or a path relative to the API."""
    return Call("GET", url, follow_redirects=True)


def probe_call(path: str) -> Call:
    return Call("GET", path, retry_transport=False, retry_statuses=False)


def wait_seconds(wait: float | None) -> int:
    """A long-poll's `?wait=N`: whole seconds (rounded up), at most the API's 60."""
    if not wait or wait <= 0:
        return 0
    return min(MAX_WAIT_S, int(-(-wait // 1)))


class Deadline:
    """Slices a wait of any length (None: until the job ends) into long-polls the API accepts."""

    def __init__(self, timeout: float | None):
        self.end = None if timeout is None else time.monotonic() + timeout

    def next_slice(self) -> float | None:
        """Seconds for the next long-poll, or None when the time is up."""
        if self.end is None:
            return MAX_WAIT_S
        left = self.end - time.monotonic()
        return min(MAX_WAIT_S, left) if left > 0 else None


@dataclass(frozen=True)
class RetryPolicy:
    """When to send a request again, and after how long: a 429 or 503 (after the server's Retry-After,
    capped at `max_wait`), a 409 that carries a Retry-After (the same Idempotency-Key is still in flight: a
    retry gets the job once it is made), or a connection that failed (exponential backoff). Never another
    4xx: the same request would fail the same way. A little random jitter keeps many clients from retrying in step."""

    max_retries: int = 3
    max_wait: float = 30.0
    backoff: float = 0.5

    def delay(self, attempt: int, error: FrescoError, call: Call) -> float | None:
        """Seconds to wait before attempt `attempt + 1` (counting from 0), or None to give up with `error`."""
        if attempt >= self.max_retries:
            return None
        in_flight = isinstance(error, ConflictError) and error.retry_after is not None
        if (isinstance(error, (RateLimitError, UnavailableError)) or in_flight) and call.retry_statuses:
            base = error.retry_after if error.retry_after is not None else self.backoff * 2 ** attempt
        elif isinstance(error, APIConnectionError) and call.retry_transport and _transient(error.__cause__):
            base = self.backoff * 2 ** attempt
        else:
            return None
        base = min(base, self.max_wait)
        return base + random.uniform(0, min(1.0, base * 0.1))


def _httpx_modules() -> list:
    """httpx, and httpx2 where something has imported it: an `http_client` may be either (Starlette's
    TestClient is an httpx2 client where httpx2 is installed, and openai and huggingface_hub install it).
    Their classes differ, so errors are caught as both; the timeout goes as a tuple, which both accept."""
    other = sys.modules.get("httpx2")
    return [httpx, other] if other is not None else [httpx]


def transport_errors() -> tuple[type[Exception], ...]:
    """No answer: the connection failed, timed out or dropped, from either library."""
    return tuple(module.TransportError for module in _httpx_modules())


def _transient(error: BaseException | None) -> bool:
    return isinstance(error, tuple(kind for module in _httpx_modules() for kind in
                                   (module.TimeoutException, module.NetworkError, module.RemoteProtocolError)))


class SSEDecoder:
    """Server-Sent Events, line by line (the WHATWG rules Fresco's stream needs): `event:` names the
    message, `data:` lines are joined, a blank line ends it, lines starting with `:` are keep-alives."""

    def __init__(self):
        self._event, self._data = "message", []

    def feed(self, line: str) -> tuple[str, Any] | None:
        """The finished message (name, parsed JSON data) when `line` ends one, else None."""
        if not line:
            if not self._data:
                self._event = "message"
                return None
            name, text = self._event, "\n".join(self._data)
            self._event, self._data = "message", []
            try:
                return name, json.loads(text)
            except ValueError:
                return name, text
        if line.startswith(":"):
            return None
        key, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if key == "event":
            self._event = value
        elif key == "data":
            self._data.append(value)
        return None


class StreamState:
    """What `events()` remembers across reconnections: the last event it gave (a reconnected stream starts by
    repeating the current state, which is not news) and how many drops came with no news in between."""

    RECONNECTS = 1  # a dropped stream is opened again once; a second drop with no progress gives up

    def __init__(self, job_id: str):
        self.job_id, self.last, self.drops = job_id, None, 0

    def is_news(self, event: Any) -> bool:
        if event == self.last:
            return False
        self.last, self.drops = event, 0
        return True

    def dropped(self) -> None:
        """Count a stream that ended before its `done` event; raise when it is one too many."""
        self.drops += 1
        if self.drops > self.RECONNECTS:
            raise APIConnectionError(f"the event stream of job {self.job_id} dropped again after reconnecting")


def result_path(job: Job, output: Output, dest_dir: Path) -> Path:
    """Where `download` writes a result: `<job id>-<name>`, so results of many jobs share a folder."""
    return Path(dest_dir) / f"{job.id}-{output.name}"


def downloadable(job: Job) -> list[Output]:
    """The outputs to download; a job that failed or was canceled raises its JobFailed/JobCanceled."""
    job.raise_for_status()
    if not job.succeeded:
        raise ValueError(f"job {job.id} is {job.status}: it has no results yet (wait for it first)")
    return job.outputs


class ClientBase:
    """The settings both clients resolve the same way, and how a `Call` becomes an httpx request."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 30.0,
                 max_retries: int = 3, max_retry_wait: float = 30.0, http_client: Any = None):
        if base_url is None and http_client is not None and str(http_client.base_url):
            base_url = str(http_client.base_url)
        self.base_url = (base_url or env_base_url() or DEFAULT_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else env_api_key()
        self.timeout = timeout
        self.retry = RetryPolicy(max_retries=max_retries, max_wait=max_retry_wait)

    def _url(self, path_or_url: str) -> str:
        """An absolute URL as it is; a path below the base URL (which may itself have a path: a proxy's prefix)."""
        if urlsplit(path_or_url).scheme:
            return path_or_url
        return f"{self.base_url}/{path_or_url.lstrip('/')}"

    def _headers(self, url: str, extra: dict | None = None) -> dict:
        """The API key goes only to the API's own origin, never to an object store's presigned URL."""
        headers = {"User-Agent": USER_AGENT, **(extra or {})}
        if self.api_key and _origin(url) == _origin(self.base_url):
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _request(self, http: httpx.Client | httpx.AsyncClient, call: Call, read_timeout: float | None = None
                 ) -> httpx.Request:
        url = self._url(call.path)
        read = read_timeout if read_timeout is not None else self.timeout + call.extra_read_s
        return http.build_request(call.method, url, json=call.json, content=call.content, params=call.params,
                                  headers=self._headers(url, call.headers),
                                  # connect, read, write, pool: a tuple, which httpx and httpx2 both take
                                  timeout=(self.timeout, read, self.timeout, self.timeout))


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def http_error(response: httpx.Response) -> FrescoError:
    """The typed error of an HTTP error answer (its body read)."""
    return error_from_response(response.status_code, response.headers, response.content)


def connection_error(exc: Exception, request: httpx.Request) -> APIConnectionError:
    """No answer, as the client's error; the httpx error is its `__cause__` (and tells the RetryPolicy why)."""
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    error = APIConnectionError(f"cannot reach {request.url.scheme}://{request.url.netloc.decode()}: {detail}")
    error.__cause__ = exc
    return error
