"""GET /docs: Swagger UI, served whole by Fresco, nothing loaded from another host. FastAPI's own page loads
its script and styles from a CDN, with no integrity check: whoever controls that CDN (or the network to it)
runs script on this origin, next to the playground and its API key. Here the assets are Swagger UI's
release files as the pinned `fastapi-offline` package ships them (swagger-ui-dist 5, Apache-2.0), the
page's own start-up script is a file too (no inline script), and a Content-Security-Policy holds the page
to this origin. ReDoc (/redoc) is off: its bundle wants blob: workers and inline styles besides."""

from __future__ import annotations

import html
import importlib.resources

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from service.api.errors import RouteNotFound

router = APIRouter(include_in_schema=False)
ASSETS_URL = "/docs/assets"
_SWAGGER = importlib.resources.files("fastapi_offline") / "static"
ASSETS = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8", "swagger-ui.css": "text/css; charset=utf-8",
          "favicon.png": "image/png"}
# Swagger UI sets inline style attributes (hence 'unsafe-inline' for styles only), shows data: and blob: images
# (its icons, an image an API call answered), and calls this origin only ("Try it out").
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
                               "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate (ETag): an upgraded server's page never mixes with old assets
}
# The page's start-up: the schema's URL comes from the page (data-openapi-url), so this file never changes.
INIT_JS = """window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  });
});
"""
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Fresco API</title>
<link rel="stylesheet" href="{assets}/swagger-ui.css">
<link rel="icon" type="image/png" href="{assets}/favicon.png">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{openapi}"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="{assets}/init.js"></script>
</body>
</html>
"""


@router.get("/docs")
async def docs(request: Request):
    """Swagger UI over this API's OpenAPI schema."""
    root = request.scope.get("root_path", "")
    page = PAGE.format(assets=html.escape(root + ASSETS_URL), openapi=html.escape(root + request.app.openapi_url))
    return HTMLResponse(page, headers=HEADERS)


@router.get(ASSETS_URL + "/{name}")
async def asset(name: str):
    """The page's script, styles and icon (a fixed set of files: no paths, nothing else on disk)."""
    if name == "init.js":
        return Response(INIT_JS, media_type="text/javascript; charset=utf-8", headers=HEADERS)
    if name not in ASSETS:
        raise RouteNotFound()
    return FileResponse(_SWAGGER / name, media_type=ASSETS[name], headers=HEADERS)  # an installed package: on disk
