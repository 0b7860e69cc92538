"""A 405's `Allow` header names every method the path answers, not only those of the one route that
matched it first (Starlette's): `/jobs/{id}` is two routes, GET and DELETE, and a PUT there must hear
both (RFC 9110 §15.5.6)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

# The methods a route here may serve, in the order `Allow` lists them.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(app: FastAPI, path: str, root_path: str = "") -> list[str]:
    """Every method some route of `app` fully matches at `path`."""
    allowed = []
    for method in METHODS:
        scope = {"type": "http", "method": method, "path": path, "root_path": root_path,
                 "headers": [], "query_string": b""}
        if any(route.matches(scope)[0] == Match.FULL for route in app.router.routes):
            allowed.append(method)
    return allowed


def list_every_allowed_method(app: FastAPI) -> None:
    """Wrap the app's handler of HTTP errors (install_error_handlers' first): a 405 gets the full `Allow`."""
    answer = app.exception_handlers[StarletteHTTPException]

    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 405:
            methods = allowed_methods(request.app, request.scope["path"], request.scope.get("root_path", ""))
            if methods:
                exc.headers = {**(exc.headers or {}), "Allow": ", ".join(methods)}
        return await answer(request, exc)

    app.add_exception_handler(StarletteHTTPException, http_error)
