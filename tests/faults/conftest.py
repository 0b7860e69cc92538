"""What the fault tests share."""

from __future__ import annotations

import pytest

from tests.faults.redis_server import RedisProcess


@pytest.fixture
def own_redis(tmp_path):
    """A Redis no other test's worker listens on, which the test may stop, kill or restart."""
    server = RedisProcess(tmp_path / "redis").start()
    yield server
    server.stop()
