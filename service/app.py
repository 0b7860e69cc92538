"""create_app(settings): routers, error handlers, lifespan. The API never imports torch or diffusers."""

from __future__ import annotations

import contextlib
import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.auth import Auth
from service.catalog import Catalog, load_catalog
from service.errors import FrescoError, dedupe, field_error
from service.events import EventHub
from service.metrics import ApiMetrics
from service.queue import REDIS_DOWN, JobQueue
from service.reaper import Reaper
from service.redis_conn import EmbeddedRedis, async_client
from service.routes import generate, health, jobs, models, results
from service.routes.common import Context, json_response
from service.schemas import generate_adapter
from service.settings import Settings, get_settings
from service.storage import storage_from_settings

log = logging.getLogger("fresco.api")


def _request_id(request: Request) -> str:
    rid = request.headers.get("x-request-id", "")
    return rid if rid.isascii() and 0 < len(rid) <= 64 and rid.replace("-", "").isalnum() else uuid.uuid4().hex


def _error(request: Request, exc: FrescoError):
    rid = _request_id(request)
    return json_response(exc.body(rid), exc.status, {**exc.headers, "X-Request-ID": rid})


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FrescoError)
    async def fresco_error(request: Request, exc: FrescoError):
        return _error(request, exc)

    @app.exception_handler(RequestValidationError)
    async def request_validation(request: Request, exc: RequestValidationError):
        # Query and path parameters; never echo the input (FastAPI's default handler does).
        fields = [field_error(".".join(str(p) for p in e["loc"][1:]) or "query", "is invalid") for e in exc.errors()]
        err = FrescoError("request is invalid", fields=dedupe(fields))
        err.status, err.code = 422, "validation_error"
        return _error(request, err)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        err = FrescoError({404: "no such route", 405: "method not allowed"}.get(exc.status_code, "request failed"))
        err.status = exc.status_code
        err.code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        err.headers = dict(exc.headers or {})
        return _error(request, err)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        if isinstance(exc, REDIS_DOWN):
            err = FrescoError("Redis is unreachable; retry later", headers={"Retry-After": "5"})
            err.status, err.code = 503, "unavailable"
            return _error(request, err)
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        rid = _request_id(request)
        return json_response({"error": {"code": "internal", "message": "internal error"}, "request_id": rid}, 500,
                             {"X-Request-ID": rid})


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
        app.openapi_schema = schema
        return schema

    return openapi


def create_app(settings: Settings | None = None, catalog: Catalog | None = None) -> FastAPI:
    settings = settings or get_settings()
    catalog = catalog or load_catalog(settings.models_file)
    metrics = ApiMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        embedded = None
        url = settings.redis_url
        if not url:
            embedded = EmbeddedRedis(settings.data_dir)
            url = embedded.url
        redis = async_client(url)
        hub = EventHub(async_client(url, socket_timeout=None))
        hub.start()
        storage = storage_from_settings(settings)
        app.state.ctx = Context(settings=settings, catalog=catalog, redis=redis, hub=hub,
                                queue=JobQueue(redis, hub, storage, settings), storage=storage, metrics=metrics,
                                auth=Auth(settings, redis))
        if not app.state.ctx.auth.enabled:
            log.warning("no API keys configured (FRESCO_API_KEYS): anyone who can reach this API can submit "
                        "jobs and read every job and result")
        reaper = Reaper(redis, settings, storage)
        if settings.reaper_interval_s:
            reaper.start(settings.reaper_interval_s)
        try:
            yield
        finally:
            await reaper.stop()
            await hub.stop()
            await redis.aclose()
            if embedded:
                embedded.close()

    app = FastAPI(title="Fresco", version="0.1.0", lifespan=lifespan,
                  description="HTTP inference service for SDXL, SDXL Turbo, img2img and Stable Video Diffusion.")
    install_error_handlers(app)
    for module in (generate, jobs, results, models, health):
        app.include_router(module.router)
    metrics.instrument(app)
    app.openapi = _openapi_with_request_schema(app)
    return app
