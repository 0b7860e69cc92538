"""A real `fresco up` for the tests: its output collected line by line while it runs, stopped with SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.stack import ROOT, free_port, tiny_models_file


class FrescoUp:
    def __init__(self, data_dir: Path, profile: tuple[str, ...] = ("tiny-turbo",), env: dict | None = None,
                 models_file: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        models_file = models_file or tiny_models_file(data_dir / "models.yaml", profile)
        self.env = {**os.environ, "FRESCO_DATA_DIR": str(data_dir), "FRESCO_PORT": str(self.port),
                    "FRESCO_HOST": "127.0.0.1", "FRESCO_WORKER_METRICS_PORT": str(free_port()),
                    "FRESCO_HEARTBEAT_TTL_S": "3", "FRESCO_HEARTBEAT_INTERVAL_S": "0.5", "FRESCO_TORCH_THREADS": "1",
                    "FRESCO_LOG_LEVEL": "WARNING", "FRESCO_MODELS_FILE": str(models_file), **(env or {})}
        for name in ("FRESCO_REDIS_URL", "PROMETHEUS_MULTIPROC_DIR"):
            self.env.pop(name, None)
        self.lines: list[str] = []
        self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", "up", "--grace", "10"], env=self.env,
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_line(self, pattern: str, timeout: float, after: int = 0) -> re.Match:
        """The first match of `pattern` in a line of the output (from line `after` on), waiting for it."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines[after:]:
                found = re.search(pattern, line)
                if found:
                    return found
            assert time.monotonic() < deadline, f"no line matched {pattern!r} in:\n{self.output}"
            time.sleep(0.05)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code
