"""Results and inputs on local disk: files under `root/<job id>/<name>`, written atomically."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from service.storage.names import valid_job_id, valid_key


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
                if valid_job_id(folder.name) and folder.is_dir() and folder.stat().st_mtime < cutoff:
                    out.append(folder.name)
            except OSError:
                continue
        return out

    def delete(self, job_id: str, name: str) -> None:
        self._path(job_id, name).unlink(missing_ok=True)

    def delete_job(self, job_id: str) -> None:
        if not valid_job_id(job_id):
            return
        folder = self.root / job_id
        if folder.is_dir():
            for child in folder.iterdir():
                child.unlink(missing_ok=True)
            folder.rmdir()
