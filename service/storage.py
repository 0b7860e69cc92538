"""Where inputs and results live: one small interface, a local directory now.

Used by the API (stores validated input images, serves results) and by workers (read inputs, write
results). Images and videos never travel through Redis.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path
from typing import Protocol

_JOB_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

CONTENT_TYPES = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "jpg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "mp4": "video/mp4",
}


def content_type_for(name: str) -> str:
    return CONTENT_TYPES.get(name.rsplit(".", 1)[-1].lower(), "application/octet-stream")


def valid_key(job_id: str, name: str) -> bool:
    """A job id is a UUID and a name a plain file name: nothing can climb out of the store."""
    return bool(_JOB_ID.fullmatch(job_id) and _NAME.fullmatch(name) and ".." not in name)


class Storage(Protocol):
    def put(self, job_id: str, name: str, data: bytes) -> None: ...
    def get(self, job_id: str, name: str) -> bytes: ...
    def local_path(self, job_id: str, name: str) -> Path | None: ...
    def delete_job(self, job_id: str) -> None: ...
    def url_for(self, job_id: str, name: str) -> str | None: ...  # a URL clients fetch directly, if any
    def jobs_older_than(self, seconds: float) -> list[str]: ...  # job ids with files, for expiry


class LocalStorage:
    """Files under `root/<job id>/<name>`, each written to a temporary file and renamed into place,
    so a reader never sees half a file and a failed write leaves nothing behind."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, job_id: str, name: str) -> Path:
        if not valid_key(job_id, name):
            raise KeyError(name)
        return self.root / job_id / name

    def put(self, job_id: str, name: str, data: bytes) -> None:
        path = self._path(job_id, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix="-" + name)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def get(self, job_id: str, name: str) -> bytes:
        return self._path(job_id, name).read_bytes()

    def local_path(self, job_id: str, name: str) -> Path | None:
        """The file's path when it exists, for zero-copy serving; None when it does not."""
        try:
            path = self._path(job_id, name)
        except KeyError:
            return None
        return path if path.is_file() else None

    def url_for(self, job_id: str, name: str) -> str | None:
        """None: local files are served by the API itself, through `local_path`."""
        return None

    def jobs_older_than(self, seconds: float) -> list[str]:
        """Job folders last written more than `seconds` ago: the reaper removes those whose job expired."""
        cutoff = time.time() - seconds
        out = []
        for folder in self.root.iterdir():
            try:
                if _JOB_ID.fullmatch(folder.name) and folder.is_dir() and folder.stat().st_mtime < cutoff:
                    out.append(folder.name)
            except OSError:
                continue
        return out

    def delete_job(self, job_id: str) -> None:
        if not _JOB_ID.fullmatch(job_id):
            return
        folder = self.root / job_id
        if folder.is_dir():
            for child in folder.iterdir():
                child.unlink(missing_ok=True)
            folder.rmdir()


def storage_from_settings(settings) -> Storage:
    if getattr(settings, "s3_bucket", None):
        from service.s3storage import S3Storage  # boto3 only where S3 is configured

        return S3Storage.from_settings(settings)
    return LocalStorage(settings.results_path)
