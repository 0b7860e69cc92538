"""GET /: the playground, a web page on the public API (service/api/playground/: HTML, CSS and ES
modules, no build step, nothing fetched from the internet). Its files are public, like /healthz: the
page asks for an API key itself when an API call answers 401, and sends it on every call."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.api.errors import RouteNotFound

router = APIRouter(include_in_schema=False)
STATIC = Path(__file__).resolve().parent.parent / "playground"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
# Scripts and styles only from this origin, no inline script; results (and their presigned redirects,
# with object storage) and previews (data URLs) from anywhere; API calls only to this origin.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src * data: blob:; media-src * data: blob:; "
                               "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: an upgraded server's page is never mixed with old modules
}
FILES = {p.name: p for p in STATIC.iterdir() if p.suffix in TYPES} if STATIC.is_dir() else {}


def _file(name: str) -> FileResponse:
    path = FILES.get(name)
    if path is None:
        raise RouteNotFound()
    return FileResponse(path, media_type=TYPES[path.suffix], headers=HEADERS)


@router.get("/")
async def page():
    """The playground page."""
    return _file("index.html")


@router.get("/playground/{name}")
async def static(name: str):
    """The page's modules and styles (a fixed set of files: no paths, nothing else on disk)."""
    return _file(name)
