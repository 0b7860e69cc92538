"""`AsyncClient`: Fresco's API from asyncio code, method for method the `Client` of sync.py, awaited. The
requests are the same `Call`s (core.py); only sending, sleeping and reading streams differ."""

from __future__ import annotations

import asyncio
import inspect
from contextlib import aclosing
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import httpx

from service.client import core
from service.client.core import Call, ClientBase, Deadline, StreamState, job_id_of
from service.client.errors import FrescoError
from service.client.types import AdapterList, DoneEvent, Event, Job, ProgressEvent, event_from_sse


class AsyncClient(ClientBase):
    """A connection to one Fresco API, for asyncio; the settings are `Client`'s (`http_client` is an
    `httpx.AsyncClient` or an `httpx2.AsyncClient`, `transport` an `httpx.AsyncBaseTransport`). Use
    `async with`, or `await aclose()`.
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 30.0,
                 max_retries: int = 3, max_retry_wait: float = 30.0, http_client: httpx.AsyncClient | None = None,
                 transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(base_url, api_key, timeout=timeout, max_retries=max_retries,
                         max_retry_wait=max_retry_wait, http_client=http_client)
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.AsyncClient(transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    # ------------------------------------------------------------ jobs

    async def submit(self, task: str, /, *, idempotency_key: str | None = None, **params: Any) -> Job:
        """Enqueue a job (POST /generate) and return it, queued. Image inputs may be paths, bytes or PIL
        images. The Idempotency-Key (one per call unless given) makes a retried request the same job."""
        return await self._call(core.submit_call(task, params, idempotency_key))

    async def get(self, job: Job | str, wait: float | None = None) -> Job:
        """The job's current state; with `wait`, the API holds the answer until the job ends or `wait`
        seconds (at most 60) pass."""
        return await self._call(core.get_call(job_id_of(job), wait))

    async def wait(self, job: Job | str, timeout: float | None = None) -> Job:
        """Long-poll until the job ends (in slices of at most 60 s); after about `timeout` seconds, return it
        as it is then (check `job.done`). Waiting never raises for a failed job: see `raise_for_status`."""
        deadline = Deadline(timeout)
        current = job if isinstance(job, Job) else None
        while current is None or not current.done:
            seconds = deadline.next_slice()
            if seconds is None:
                return current or await self.get(job)
            current = await self.get(job, wait=seconds)
        return current

    async def cancel(self, job: Job | str) -> Job:
        """Cancel: a queued job never runs, a running one stops at its next step. ConflictError if it ended."""
        return await self._call(core.cancel_call(job_id_of(job)))

    async def events(self, job: Job | str, *, previews: bool = False) -> AsyncIterator[Event]:
        """The job's Server-Sent Events: a `ProgressEvent` per change, then one `DoneEvent` with the terminal
        job. A stream that drops is opened again once (or the job read, when it has ended meanwhile)."""
        state = StreamState(job_id_of(job))
        while True:
            async with aclosing(self._stream(state.job_id, previews)) as stream:
                async for event in stream:
                    if state.is_news(event):
                        yield event
                    if isinstance(event, DoneEvent):
                        return
            current = await self.get(state.job_id)
            if current.done:
                yield DoneEvent(current)
                return
            state.dropped()

    async def follow(self, job: Job | str, on_progress: Callable[[ProgressEvent], Any] | None = None) -> Job:
        """Follow the job's events, calling `on_progress` (a function or a coroutine function) with each
        progress event; the terminal job."""
        async with aclosing(self.events(job)) as events:
            async for event in events:
                if isinstance(event, DoneEvent):
                    return event.job
                if on_progress is not None and inspect.isawaitable(result := on_progress(event)):
                    await result
        raise AssertionError("unreachable: events() ends with a DoneEvent or raises")

    async def generate(self, task: str, /, *, wait: bool = True,
                       on_progress: Callable[[ProgressEvent], Any] | None = None, idempotency_key: str | None = None,
                       **params: Any) -> Job:
        """Submit a job and (unless `wait=False`) wait for it: followed through its events when
        `on_progress` is given, else long-polled. Raises `JobFailed` or `JobCanceled` when it ends without
        results, so a returned job has succeeded."""
        job = await self.submit(task, idempotency_key=idempotency_key, **params)
        if not wait:
            return job
        job = await (self.follow(job, on_progress) if on_progress else self.wait(job))
        return job.raise_for_status()

    # ------------------------------------------------------------ training

    async def train(self, model: str | None, name: str, images: Any, *, captions: Any = None, wait: bool = False,
                    on_progress: Callable[[ProgressEvent], Any] | None = None, idempotency_key: str | None = None,
                    **params: Any) -> Job:
        """`Client.train`, awaited."""
        # Reading and zipping a dataset folder is file work: done in a thread, off the event loop.
        call = await asyncio.to_thread(core.train_call, model, name, images, params, captions=captions,
                                       idempotency_key=idempotency_key)
        job = await self._call(call)
        if not wait:
            return job
        job = await (self.follow(job, on_progress) if on_progress else self.wait(job))
        return job.raise_for_status()

    async def adapters(self) -> AdapterList:
        """GET /adapters: the adapters this API key trained, by name (a list of `Adapter`; `.limit`: how many
        the key may keep)."""
        return await self._call(core.adapters_call())

    async def delete_adapter(self, name: str) -> None:
        """DELETE /adapters/{name}: remove one of this key's adapters (NotFoundError when it has none of
        that name)."""
        await self._call(core.delete_adapter_call(name))

    # ------------------------------------------------------------ results

    async def fetch(self, url: str) -> bytes:
        """A result file's bytes, by the absolute (possibly signed) URL of the JobView or a relative path."""
        return (await self._send(core.fetch_call(url))).content

    async def download(self, job: Job, dest_dir: str | Path = ".") -> list[Path]:
        """Save each result of a succeeded job as `<dest_dir>/<job id>-<name>`; the paths. A failed or
        canceled job raises its JobFailed/JobCanceled; one not finished yet, ValueError."""
        outputs = core.downloadable(job)
        Path(dest_dir).mkdir(parents=True, exist_ok=True)
        paths = [core.result_path(job, output, Path(dest_dir)) for output in outputs]
        for output, path in zip(outputs, paths):
            await self._save(output.url, path)
        return paths

    # ------------------------------------------------------------ service

    async def models(self) -> dict:
        """GET /models: each task's models, which are loaded, their defaults and limits."""
        return await self._call(core.models_call())

    async def health(self) -> bool:
        """The API process answers (GET /healthz)."""
        return await self._probe("/healthz")

    async def ready(self) -> bool:
        """Redis answers and a live worker serves each configured task (GET /readyz)."""
        return await self._probe("/readyz")

    # ------------------------------------------------------------ sending

    async def _call(self, call: Call) -> Any:
        response = await self._send(call)
        return call.parse(response.json() if response.content else None)

    async def _send(self, call: Call, *, stream: bool = False, read_timeout: float | None = None) -> httpx.Response:
        """Send `call`, retried per the RetryPolicy; the response (open, when `stream`), or the typed error."""
        request = self._request(self._http, call, read_timeout)
        attempt = 0
        while True:
            try:
                response = await self._http.send(request, stream=stream, follow_redirects=call.follow_redirects)
            except core.transport_errors() as exc:
                error = core.connection_error(exc, request)
            else:
                if response.status_code < 400:
                    return response
                await response.aread()
                await response.aclose()
                error = core.http_error(response)
            delay = self.retry.delay(attempt, error, call)
            if delay is None:
                raise error
            await asyncio.sleep(delay)
            attempt += 1

    async def _stream(self, job_id: str, previews: bool) -> AsyncIterator[Event]:
        """One connection's events; ends quietly if the connection drops (`events` decides what next)."""
        response = await self._send(core.events_call(job_id, previews), stream=True,
                              read_timeout=core.STREAM_READ_TIMEOUT_S)
        decoder = core.SSEDecoder()
        try:
            async for line in response.aiter_lines():
                message = decoder.feed(line)
                event = event_from_sse(*message) if message else None
                if event is not None:
                    yield event
        except core.transport_errors():
            return
        finally:
            await response.aclose()

    async def _save(self, url: str, path: Path) -> None:
        """Stream a file to `path` through a `.part` file, so a broken download never looks complete."""
        partial = path.with_name(path.name + ".part")
        response = await self._send(core.fetch_call(url), stream=True)
        try:
            with partial.open("wb") as out:
                async for chunk in response.aiter_bytes():
                    out.write(chunk)
            partial.replace(path)
        except core.transport_errors() as exc:
            raise core.connection_error(exc, response.request) from exc
        finally:
            await response.aclose()
            partial.unlink(missing_ok=True)

    async def _probe(self, path: str) -> bool:
        try:
            await self._send(core.probe_call(path))
        except FrescoError:
            return False
        return True
