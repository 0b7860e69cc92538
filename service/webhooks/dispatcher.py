"""The webhook dispatcher: takes due deliveries from the outbox and POSTs them, signed, until each is
delivered or given up. Runs in every API process (FRESCO_WEBHOOK_DISPATCHER) or alone (`fresco
webhooks`); several at once share the work, each delivery leased to one at a time.

At least once, never lost: a delivery is taken with a lease (its due time moves to the lease's end),
so one whose dispatcher dies mid-attempt is due again when the lease ends, for any dispatcher. A
receiver may so see a delivery twice, always with the same `webhook-id` and the same body: the body
is rendered once, on the first attempt, from the job record as the event left it, and kept.

Each attempt re-checks the URL (its host must still resolve to allowed addresses: DNS rebinding gains
nothing) and POSTs to the checked address, following no redirect, within FRESCO_WEBHOOK_TIMEOUT_S. A 2xx
delivers; connection errors, timeouts, 429 and 5xx are retried with exponential backoff and full
jitter (a `Retry-After` on 429 and 503 is honoured as the least wait), until FRESCO_WEBHOOK_RETRY_FOR_S
after the event; any other answer (3xx, 4xx) gives up at once. A job's deliveries go out in the order
its events happened, one at a time, as long as each succeeds; a retried one may arrive after later ones.

Fair across API keys: each dispatcher attempts at most FRESCO_WEBHOOK_MAX_IN_FLIGHT deliveries at once,
and of one key's at most FRESCO_WEBHOOK_MAX_IN_FLIGHT_PER_KEY over all dispatchers (held in Redis, see
outbox.py); due deliveries of other keys are taken past a key at its cap, the keys in turns.
"""

from __future__ import annotations

import asyncio
import logging
import random
from email.utils import parsedate_to_datetime

import httpx

from service.fetch import FetchRejected, TimedOut, Unreachable, guarded_client, post_public_url
from service.jobs.protocol import dumps, now
from service.jobs.view import iso, to_view, url_without_query
from service.redis import REDIS_DOWN
from service.settings import Settings
from service.signed_urls import UrlSigner
from service.webhooks import outbox, signing, targets
from service.webhooks.metrics import WebhookMetrics
from service.webhooks.outbox import Delivery

log = logging.getLogger("fresco.webhooks")

POLL_INTERVAL_S = 0.25  # how often the due set is looked at while there is nothing to send
MAX_BACKOFF_S = 3600.0  # the longest wait between two attempts (and the most of a Retry-After honoured)
LEASE_MARGIN_S = 5.0  # a lease outlasts the longest attempt (resolving and posting) by this much
STOP_GRACE_S = 5.0  # on stop, attempts in flight get this long to finish; the rest are due again later
RETRIED = frozenset({"throttled", "server_error", "timeout", "connection_error"})


def result_of(status: int) -> str:
    """An answer's class, as `fresco_webhook_attempts_total{result}` counts it."""
    if 200 <= status < 300:
        return "success"
    if status == 429:
        return "throttled"
    if status >= 500:
        return "server_error"
    return "redirect" if 300 <= status < 400 else "client_error"


def retry_after_s(response: httpx.Response, at: float) -> float | None:
    """A 429's or 503's `Retry-After` (seconds or an HTTP date) as seconds from `at`; None when absent or bad."""
    if response.status_code not in (429, 503):
        return None
    value = response.headers.get("retry-after", "").strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - at)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class Dispatcher:
    def __init__(self, redis, settings: Settings, metrics: WebhookMetrics, *, rng: random.Random | None = None):
        if not settings.webhook_secret:
            raise ValueError("the webhook dispatcher needs FRESCO_WEBHOOK_SECRET")
        self.redis, self.settings, self.metrics = redis, settings, metrics
        self.rng = rng or random.Random()
        self.key = signing.secret_key(settings.webhook_secret)
        # Result URLs in the body: on the public URL (or the API's own address), signed when API keys are on.
        self.base_url = (settings.public_url or f"http://{settings.host}:{settings.port}").rstrip("/")
        self.sign_url = UrlSigner(settings).sign
        self.schemes, self.networks = targets.schemes(settings), targets.allowed_networks(settings)
        self.lease_s = settings.webhook_timeout_s + LEASE_MARGIN_S
        self.max_in_flight = settings.webhook_max_in_flight  # attempts at once here (and taken per look)
        self.max_per_key = settings.webhook_max_in_flight_per_key  # one key's, over all dispatchers
        self._owners: dict[str, str] = {}  # delivery id -> its key's name, as looks read them
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()
        self._attempts: set[asyncio.Task] = set()
        self._in_flight: set[str] = set()  # delivery ids taken and not settled by this dispatcher yet
        self._last_of_job: dict[str, asyncio.Task] = {}  # each job's latest delivery, which the next awaits

    # ---- running

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            # No connection kept alive: a request is never sent on a connection made for another host
            # name at the same address (see service/fetch.py `post_public_url`).
            self._client = guarded_client(timeout=self.settings.webhook_timeout_s,
                                          limits=httpx.Limits(max_keepalive_connections=0))
        return self._client

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="fresco-webhooks")

    async def stop(self) -> None:
        """Stop taking deliveries; give those in flight a moment, then leave them to their lease."""
        self._stopping.set()
        if self._task:
            self._task.cancel()  # redis-py can absorb a cancel inside a command: the loop also checks the event
            await asyncio.wait({self._task}, timeout=2)
        if self._attempts:
            _, late = await asyncio.wait(set(self._attempts), timeout=STOP_GRACE_S)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1)
        if self._client is not None:
            await self._client.aclose()

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            taken = 0
            try:
                taken = await self.dispatch_due()
            except asyncio.CancelledError:
                raise
            except REDIS_DOWN:
                pass  # nothing to do until Redis is back; leased deliveries come due again
            except Exception:
                log.exception("webhook dispatch failed")
            if taken and len(self._in_flight) < self.max_in_flight:
                continue  # there may be more due right now
            try:
                await asyncio.wait_for(self._stopping.wait(), POLL_INTERVAL_S)
            except asyncio.TimeoutError:
                pass

    async def dispatch_due(self) -> int:
        """Take the due deliveries there is room for and start their attempts: how many were taken."""
        room = self.max_in_flight - len(self._in_flight)
        if room <= 0:
            return 0
        at = now()
        look = await outbox.look(self.redis, at, room, self.max_per_key, self._owners)
        self.metrics.keys_at_cap.set(look.capped)
        if not look.candidates:
            return 0
        taken = await outbox.take(at, at + self.lease_s, room, self.max_per_key, look.candidates).arun(self.redis)
        ids = [i for i in taken if i not in self._in_flight]
        deliveries = []
        for delivery_id, delivery in zip(ids, await outbox.read(self.redis, ids)):
            if delivery is None:
                await outbox.drop(self.redis, delivery_id)
            else:
                deliveries.append(delivery)
        for delivery in sorted(deliveries, key=lambda d: (d.job, d.seq)):
            self._launch(delivery)
        return len(ids)

    async def idle(self) -> None:
        """Wait until every attempt started so far has ended (tests, shutdown)."""
        while self._attempts:
            await asyncio.wait(set(self._attempts))

    def _launch(self, delivery: Delivery) -> None:
        """Attempt `delivery` once the job's delivery before it (if any is in flight here) has been attempted."""
        self._in_flight.add(delivery.id)
        self.metrics.in_flight.inc()
        before = self._last_of_job.get(delivery.job)
        task = asyncio.create_task(self._attempt_after(before, delivery))
        self._last_of_job[delivery.job] = task
        self._attempts.add(task)

        def done(t: asyncio.Task) -> None:
            self._attempts.discard(t)
            self._in_flight.discard(delivery.id)
            self._owners.pop(delivery.id, None)
            self.metrics.in_flight.dec()
            if self._last_of_job.get(delivery.job) is t:
                del self._last_of_job[delivery.job]

        task.add_done_callback(done)

    async def _attempt_after(self, before: asyncio.Task | None, delivery: Delivery) -> None:
        try:
            if before is not None:
                await asyncio.wait({before})
                if not await outbox.renew(self.redis, delivery.id, now() + self.lease_s):
                    return  # settled meanwhile, by an attempt whose lease this wait outlived
            await self.attempt(delivery)
        except REDIS_DOWN:
            log.warning("webhook delivery %s not recorded: Redis unreachable; due again when its lease ends",
                        delivery.id)
        except Exception:
            log.exception("webhook delivery %s failed; due again when its lease ends", delivery.id)

    # ---- one attempt

    def render(self, delivery: Delivery) -> str:
        """The body: the event's type and time, and the JobView as the event left the job."""
        view = to_view(delivery.snapshot, self.base_url, self.sign_url)
        return dumps({"type": f"job.{delivery.event}", "timestamp": iso(delivery.created_at), "data": view})

    async def attempt(self, delivery: Delivery) -> None:
        """POST the delivery once and record the outcome: delivered, due again later, or given up."""
        body = delivery.body
        if body is None:
            if delivery.snapshot is None:  # nothing to render from: never written by a transition
                await self._settle(delivery, "blocked", None, None)
                return
            body = await outbox.keep_body(delivery.id, self.render(delivery)).arun(self.redis)
            if body is None:
                return  # settled meanwhile, by an attempt whose lease this one outlived
        at = now()
        status, wait = None, None
        try:
            response = await post_public_url(
                self.client, delivery.url, body.encode(), signing.headers(self.key, delivery.id, int(at), body),
                schemes=self.schemes, allowed_networks=self.networks, timeout_s=self.settings.webhook_timeout_s)
            status, result, wait = response.status_code, result_of(response.status_code), retry_after_s(response, at)
        except TimedOut:
            result = "timeout"
        except Unreachable:
            result = "connection_error"
        except FetchRejected:
            result = "blocked"
        await self._settle(delivery, result, status, wait)

    def retry_at(self, delivery: Delivery, wait: float | None) -> float | None:
        """When to try again (exponential backoff, full jitter, at least `wait`), or None past the retry window."""
        at = now()
        deadline = delivery.created_at + self.settings.webhook_retry_for_s
        if at >= deadline:
            return None
        delay = self.rng.uniform(0, min(MAX_BACKOFF_S, self.settings.webhook_backoff_s * 2 ** delivery.attempts))
        if wait is not None:
            delay = max(delay, min(wait, MAX_BACKOFF_S))
        return min(at + delay, deadline)

    async def _settle(self, delivery: Delivery, result: str, status: int | None, wait: float | None) -> None:
        self.metrics.attempts.labels(result).inc()
        delivered = result == "success"
        retry_at = self.retry_at(delivery, wait) if result in RETRIED else None
        if not await outbox.settle(delivery, retry_at=retry_at, delivered=delivered, status=status).arun(self.redis):
            return  # another attempt settled it first: counted there
        if delivered:
            self.metrics.deliveries.labels("delivered").inc()
            self.metrics.lag.observe(max(0.0, now() - delivery.created_at))
        elif retry_at is None:
            self.metrics.deliveries.labels("gave_up").inc()
            log.warning("webhook delivery %s (job %s, %s) to %s given up after %d attempt(s): %s%s", delivery.id,
                        delivery.job, delivery.event, url_without_query(delivery.url), delivery.attempts + 1, result,
                        f" (HTTP {status})" if status else "")
