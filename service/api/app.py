"""create_app(settings): the HTTP API. Routers, error handlers, and a lifespan that connects Redis,
the event hub, the reaper and (with a webhook secret) the webhook dispatcher. The API never imports
torch, diffusers or the worker code."""

from __future__ import annotations

import contextlib
import logging

from fastapi import FastAPI

from service.api.access import JobAccess
from service.api.allow import list_every_allowed_method
from service.api.auth import Auth
from service.api.body_timeout import BodyTimeout
from service.api.compat import a1111, openai_images
from service.api.deps import Context
from service.api.errors import install_error_handlers
from service.api.events import EventHub
from service.api.metrics import ApiMetrics
from service.api.routes import docs, generate, health, jobs, models, playground, results, train
from service.api.requests import generate_adapter
from service.catalog import Catalog, load_catalog
from service.jobs.reaper import Reaper
from service.redis import async_client, url_or_embedded
from service.settings import Settings, get_settings
from service.storage import storage_from_settings
from service.webhooks.dispatcher import Dispatcher

log = logging.getLogger("fresco.api")


def _openapi_with_request_schema(app: FastAPI):
    """The request body is parsed by hand (size limit, strict JSON), so add its schema to OpenAPI."""
    base = app.openapi

    def openapi():
        if app.openapi_schema:
            return app.openapi_schema
        schema = base()
        body = generate_adapter.json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(body.pop("$defs", {}))
        components["GenerateRequest"] = body
        train_body = train.train_adapter.json_schema(ref_template="#/components/schemas/{model}")
        components.update(train_body.pop("$defs", {}))
        components["TrainRequest"] = train_body
        app.openapi_schema = schema
        return schema

    return openapi


def create_app(settings: Settings | None = None, catalog: Catalog | None = None) -> FastAPI:
    settings = settings or get_settings()
    catalog = catalog or load_catalog(settings.models_file)
    metrics = ApiMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        url, embedded = url_or_embedded(settings)
        redis = async_client(url)
        hub = EventHub(async_client(url, socket_timeout=None))
        hub.start()
        storage = storage_from_settings(settings)
        app.state.ctx = Context(settings=settings, catalog=catalog, redis=redis, hub=hub,
                                jobs=JobAccess(redis, hub, settings.job_ttl_s), storage=storage, metrics=metrics,
                                auth=Auth(settings, redis))
        await app.state.ctx.auth.load_url_secret()
        if not app.state.ctx.auth.enabled:
            log.warning("no API keys configured (FRESCO_API_KEYS): anyone who can reach this API can submit "
                        "jobs and read every job and result")
        reaper = Reaper(redis, settings, storage)
        if settings.reaper_interval_s:
            reaper.start(settings.reaper_interval_s)
        dispatcher = None
        if settings.webhook_secret and settings.webhook_dispatcher:
            dispatcher = Dispatcher(redis, settings, metrics.webhooks)
            dispatcher.start()
        try:
            yield
        finally:
            if dispatcher:
                await dispatcher.stop()
            await reaper.stop()
            await hub.stop()
            await redis.aclose()
            if embedded:
                embedded.close()

    # /docs is routes/docs.py's (Swagger UI served by Fresco itself, under a CSP); no ReDoc.
    app = FastAPI(title="Fresco", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="HTTP inference service for SDXL, SDXL Turbo, img2img and Stable Video Diffusion.")
    install_error_handlers(app)
    list_every_allowed_method(app)
    for module in (generate, train, jobs, results, models, health, openai_images, a1111, playground, docs):
        app.include_router(module.router)
    app.add_middleware(BodyTimeout, timeout_s=settings.body_timeout_s)  # inside the metrics: a 408 is counted
    metrics.instrument(app)
    app.openapi = _openapi_with_request_schema(app)
    return app
