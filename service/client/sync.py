"""`Client`: Fresco's API from blocking code. Every request is a `Call` built in core.py; this module only
sends them (with retries), sleeps, and reads streams. `AsyncClient` (aio.py) is the same, awaited."""

from __future__ import annotations

import time
from contextlib import closing
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

from service.client import core
from service.client.core import Call, ClientBase, Deadline, StreamState, job_id_of
from service.client.errors import FrescoError
from service.client.types import AdapterList, DoneEvent, Event, Job, ProgressEvent, event_from_sse


class Client(ClientBase):
    """A connection to one Fresco API.

    `base_url` defaults to FRESCO_URL, else http://127.0.0.1:8000; `api_key` to FRESCO_API_KEY. A 429 or
    503 and a failed connection are retried up to `max_retries` times (after the server's Retry-After,
    at most `max_retry_wait` s); other errors raise at once. `http_client` (an `httpx.Client` or an
    `httpx2.Client`, e.g. Starlette's TestClient) or `transport` replace the connection for proxies, tests or
    custom TLS; an injected client is not closed by `close()`.
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 30.0,
                 max_retries: int = 3, max_retry_wait: float = 30.0, http_client: httpx.Client | None = None,
                 transport: httpx.BaseTransport | None = None):
        super().__init__(base_url, api_key, timeout=timeout, max_retries=max_retries,
                         max_retry_wait=max_retry_wait, http_client=http_client)
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.Client(transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    # ------------------------------------------------------------ jobs

    def submit(self, task: str, /, *, idempotency_key: str | None = None, **params: Any) -> Job:
        """Enqueue a job (POST /generate) and return it, queued. Image inputs may be paths, bytes or PIL
        images. The Idempotency-Key (one per call unless given) makes a retried request the same job."""
        return self._call(core.submit_call(task, params, idempotency_key))

    def get(self, job: Job | str, wait: float | None = None) -> Job:
        """The job's current state; with `wait`, the API holds the answer until the job ends or `wait`
        seconds (at most 60) pass."""
        return self._call(core.get_call(job_id_of(job), wait))

    def wait(self, job: Job | str, timeout: float | None = None) -> Job:
        """Long-poll until the job ends (in slices of at most 60 s); after about `timeout` seconds, return it
        as it is then (check `job.done`). Waiting never raises for a failed job: see `raise_for_status`."""
        deadline = Deadline(timeout)
        current = job if isinstance(job, Job) else None
        while current is None or not current.done:
            seconds = deadline.next_slice()
            if seconds is None:
                return current or self.get(job)
            current = self.get(job, wait=seconds)
        return current

    def cancel(self, job: Job | str) -> Job:
        """Cancel: a queued job never runs, a running one stops at its next step. ConflictError if it ended."""
        return self._call(core.cancel_call(job_id_of(job)))

    def events(self, job: Job | str, *, previews: bool = False) -> Iterator[Event]:
        """The job's Server-Sent Events: a `ProgressEvent` per change, then one `DoneEvent` with the terminal
        job. A stream that drops is opened again once (or the job read, when it has ended meanwhile)."""
        state = StreamState(job_id_of(job))
        while True:
            with closing(self._stream(state.job_id, previews)) as stream:
                for event in stream:
                    if state.is_news(event):
                        yield event
                    if isinstance(event, DoneEvent):
                        return
            current = self.get(state.job_id)
            if current.done:
                yield DoneEvent(current)
                return
            state.dropped()

    def follow(self, job: Job | str, on_progress: Callable[[ProgressEvent], Any] | None = None) -> Job:
        """Follow the job's events, calling `on_progress` with each progress event; the terminal job."""
        with closing(self.events(job)) as events:
            for event in events:
                if isinstance(event, DoneEvent):
                    return event.job
                if on_progress is not None:
                    on_progress(event)
        raise AssertionError("unreachable: events() ends with a DoneEvent or raises")

    def generate(self, task: str, /, *, wait: bool = True, on_progress: Callable[[ProgressEvent], Any] | None = None,
                 idempotency_key: str | None = None, **params: Any) -> Job:
        """Submit a job and (unless `wait=False`) wait for it: followed through its events when
        `on_progress` is given, else long-polled. Raises `JobFailed` or `JobCanceled` when it ends without
        results, so a returned job has succeeded."""
        job = self.submit(task, idempotency_key=idempotency_key, **params)
        if not wait:
            return job
        job = self.follow(job, on_progress) if on_progress else self.wait(job)
        return job.raise_for_status()

    # ------------------------------------------------------------ training

    def train(self, model: str | None, name: str, images: Any, *, captions: Any = None, wait: bool = False,
              on_progress: Callable[[ProgressEvent], Any] | None = None, idempotency_key: str | None = None,
              **params: Any) -> Job:
        """Start a training job (POST /train): a LoRA (`method="lora"`, the default), an embedding or both,
        named `name`, on `model` (an SD or SDXL model GET /models lists for `train`; None: the server's
        default). `images`: a folder of PNG/JPEG/WebP files with same-name .txt captions (kohya's layout,
        subfolders too; sent as a zip), a .zip of one, or a list of image inputs (paths, bytes, PIL images,
        URLs) or (image, caption) pairs.
        `captions`: for a folder, one str for the images without a caption file or a mapping of file name to
        caption; for a list, one str for all or one per image. `params`: the request's other fields (steps,
        rank, learning_rate, resolution, trigger, init_token, validation={"prompt": ...}, seed, replace, ...).

        Returns the job, queued (follow it with `events`/`follow`, or `wait`); with `wait=True`, the job
        once it ended (followed through its events when `on_progress` is given), raising `JobFailed` or
        `JobCanceled` if it did not succeed, so that `job.adapter` is set. ValueError, before anything is
        sent, when there are no images."""
        job = self._call(core.train_call(model, name, images, params, captions=captions,
                                         idempotency_key=idempotency_key))
        if not wait:
            return job
        job = self.follow(job, on_progress) if on_progress else self.wait(job)
        return job.raise_for_status()

    def adapters(self) -> AdapterList:
        """GET /adapters: the adapters this API key trained, by name (a list of `Adapter`; `.limit`: how many
        the key may keep)."""
        return self._call(core.adapters_call())

    def delete_adapter(self, name: str) -> None:
        """DELETE /adapters/{name}: remove one of this key's adapters (NotFoundError when it has none of
        that name)."""
        self._call(core.delete_adapter_call(name))

    # ------------------------------------------------------------ results

    def fetch(self, url: str) -> bytes:
        """A result file's bytes, by the absolute (possibly signed) URL of the JobView or a relative path."""
        return self._send(core.fetch_call(url)).content

    def download(self, job: Job, dest_dir: str | Path = ".") -> list[Path]:
        """Save each result of a succeeded job as `<dest_dir>/<job id>-<name>`; the paths. A failed or
        canceled job raises its JobFailed/JobCanceled; one not finished yet, ValueError."""
        outputs = core.downloadable(job)
        Path(dest_dir).mkdir(parents=True, exist_ok=True)
        paths = [core.result_path(job, output, Path(dest_dir)) for output in outputs]
        for output, path in zip(outputs, paths):
            self._save(output.url, path)
        return paths

    # ------------------------------------------------------------ service

    def models(self) -> dict:
        """GET /models: each task's models, which are loaded, their defaults and limits."""
        return self._call(core.models_call())

    def health(self) -> bool:
        """The API process answers (GET /healthz)."""
        return self._probe("/healthz")

    def ready(self) -> bool:
        """Redis answers and a live worker serves each configured task (GET /readyz)."""
        return self._probe("/readyz")

    # ------------------------------------------------------------ sending

    def _call(self, call: Call) -> Any:
        response = self._send(call)
        return call.parse(response.json() if response.content else None)

    def _send(self, call: Call, *, stream: bool = False, read_timeout: float | None = None) -> httpx.Response:
        """Send `call`, retried per the RetryPolicy; the response (open, when `stream`), or the typed error."""
        request = self._request(self._http, call, read_timeout)
        attempt = 0
        while True:
            try:
                response = self._http.send(request, stream=stream, follow_redirects=call.follow_redirects)
            except core.transport_errors() as exc:
                error = core.connection_error(exc, request)
            else:
                if response.status_code < 400:
                    return response
                response.read()
                response.close()
                error = core.http_error(response)
            delay = self.retry.delay(attempt, error, call)
            if delay is None:
                raise error
            time.sleep(delay)
            attempt += 1

    def _stream(self, job_id: str, previews: bool) -> Iterator[Event]:
        """One connection's events; ends quietly if the connection drops (`events` decides what next)."""
        response = self._send(core.events_call(job_id, previews), stream=True,
                              read_timeout=core.STREAM_READ_TIMEOUT_S)
        decoder = core.SSEDecoder()
        try:
            for line in response.iter_lines():
                message = decoder.feed(line)
                event = event_from_sse(*message) if message else None
                if event is not None:
                    yield event
        except core.transport_errors():
            return
        finally:
            response.close()

    def _save(self, url: str, path: Path) -> None:
        """Stream a file to `path` through a `.part` file, so a broken download never looks complete."""
        partial = path.with_name(path.name + ".part")
        response = self._send(core.fetch_call(url), stream=True)
        try:
            with partial.open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
            partial.replace(path)
        except core.transport_errors() as exc:
            raise core.connection_error(exc, response.request) from exc
        finally:
            response.close()
            partial.unlink(missing_ok=True)

    def _probe(self, path: str) -> bool:
        try:
            self._send(core.probe_call(path))
        except FrescoError:
            return False
        return True
