"""Where inputs and results live: one small protocol, a local directory or S3-compatible object storage.

Used by the API (stores validated input images, serves results) and by workers (read inputs, write
results). Images and videos never travel through Redis. `names.py` says what files are called and
what they contain; `local.py` and `s3.py` are the two stores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from service.storage.local import LocalStorage


class Storage(Protocol):
    def put(self, job_id: str, name: str, data: bytes) -> None: ...
    def get(self, job_id: str, name: str) -> bytes: ...
    def local_path(self, job_id: str, name: str) -> Path | None: ...
    def delete_job(self, job_id: str) -> None: ...
    def delete(self, job_id: str, name: str) -> None: ...  # one file (a trained adapter's, a checkpoint)
    def url_for(self, job_id: str, name: str) -> str | None: ...  # a URL clients fetch directly, if any
    def jobs_older_than(self, seconds: float) -> list[str]: ...  # job ids with files, for expiry


def storage_from_settings(settings) -> Storage:
    """S3 when a bucket is configured (boto3 is imported only then), else the local results directory."""
    if settings.s3_bucket:
        from service.storage.s3 import S3Storage

        return S3Storage.from_settings(settings)
    return LocalStorage(settings.results_path)


__all__ = ["LocalStorage", "Storage", "storage_from_settings"]
