"""GET /results/{id}/{name}: result files (and the stored input image) with their content type."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from service.api.deps import Ctx
from service.api.errors import NotFound, Unavailable
from service.api.schemas import ErrorBody
from service.storage.names import content_type_for, valid_key

router = APIRouter()
log = logging.getLogger("fresco.api")


@router.get("/results/{job_id}/{name}", response_class=FileResponse, responses={
    200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}, "image/gif": {}, "video/mp4": {}},
          "description": "the file"},
    307: {"description": "object storage: a redirect to a presigned URL that expires"},
    404: {"model": ErrorBody}, 503: {"model": ErrorBody}})
async def get_result(c: Ctx, job_id: str, name: str, expires: str | None = None, signature: str | None = None):
    """A result file. With API keys on, the URL must carry the signature the JobView gave it."""
    if not valid_key(job_id, name) or not c.auth.verify(job_id, name, expires, signature):
        raise NotFound()
    storage = c.storage
    path = storage.local_path(job_id, name)
    if path is None:
        # Object storage: a 307 to a presigned, expiring URL; the bytes never pass through the API.
        try:
            url = await asyncio.to_thread(storage.url_for, job_id, name)
        except Exception:
            log.warning("object storage unreachable for %s/%s", job_id, name, exc_info=True)
            raise Unavailable("the result store is unreachable; retry later") from None
        if url is None:
            raise NotFound()
        return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
    return FileResponse(path, media_type=content_type_for(name),
                        headers={"Cache-Control": "private, max-age=86400, immutable"})
