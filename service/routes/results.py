"""GET /results/{id}/{name}: result files (and the stored input image) with their content type."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from service.errors import NotFound
from service.routes.common import ctx
from service.schemas import ErrorBody
from service.storage import content_type_for, valid_key

router = APIRouter()


@router.get("/results/{job_id}/{name}", response_class=FileResponse, responses={
    200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}, "image/gif": {}, "video/mp4": {}},
          "description": "the file"},
    404: {"model": ErrorBody}})
async def get_result(request: Request, job_id: str, name: str):
    if not valid_key(job_id, name):
        raise NotFound()
    path = ctx(request).storage.local_path(job_id, name)
    if path is None:
        raise NotFound()
    return FileResponse(path, media_type=content_type_for(name),
                        headers={"Cache-Control": "private, max-age=86400, immutable"})
