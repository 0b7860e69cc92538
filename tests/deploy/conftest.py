"""Shared parts for the deployment tests: a real S3-protocol server, a Fresco stack (API + worker
processes) that stores results in it, and the tools from Debian's `prometheus` package."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ROOT, Stack, png_data_url, wait_status

DEPLOY = ROOT / "deploy"
COMPOSE_MODELS = DEPLOY / "compose" / "models.yaml"


def commented_models(path: Path) -> dict[str, dict]:
    """The example models a models file carries as YAML comments (`  # name:` and its `  #   ` lines)."""
    lines = path.read_text().splitlines()
    out: dict[str, dict] = {}
    for i, line in enumerate(lines):
        if re.fullmatch(r"  # [a-z0-9][a-z0-9.-]*:", line):
            block = [line[4:]]
            for more in lines[i + 1:]:
                if not more.startswith("  #   "):
                    break
                block.append(more[4:])
            out.update(yaml.safe_load("\n".join(block)))
    return out


def tool(name: str) -> str:
    """The path of a command-line tool, or a skip that says how to get it (`make test` installs it
    when it can: a root shell with apt-get)."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"`{name}` is not installed: it comes with Debian's `prometheus` package "
                    "(`apt-get install prometheus`; `make test` does this when run as root with apt-get)")
    return path


def run_tool(*argv: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="package")
def s3():
    pytest.importorskip("moto.server", reason="moto[server] (the test extra) is not installed")
    from tests.deploy.s3server import S3Server

    server = S3Server()
    yield server
    server.stop()


@pytest.fixture(scope="package")
def s3_stack(s3, tmp_path_factory):
    """API and one worker (the tiny SDXL, Turbo and SVD models: the image and video tasks) with S3 storage,
    on a Redis of their own so no other test's worker can take their jobs. Yields (stack, bucket)."""
    from service.redis import EmbeddedRedis

    data = tmp_path_factory.mktemp("s3-stack")
    redis = EmbeddedRedis(data / "redis")
    bucket = s3.new_bucket()
    public = f"http://localhost:{s3.port}"  # what clients follow: another host name than the workers use
    stack = Stack(redis.url, data, env=s3.env(bucket, FRESCO_S3_PUBLIC_ENDPOINT_URL=public,
                                                    FRESCO_S3_PRESIGN_EXPIRES_S="600"),
                  profile=("tiny-sdxl", "tiny-turbo", "tiny-svd"))
    try:
        stack.wait_ready()
        yield stack, bucket
    finally:
        stack.stop()
        redis.close()


@pytest.fixture(scope="package")
def exercised(s3_stack):
    """The S3 stack after one job of each kind of work, so every histogram and counter has samples."""
    stack, _ = s3_stack
    with stack.client() as client:
        ids = [client.post("/generate", json=body).json()["id"] for body in (
            {"task": "turbo", "prompt": "x", "width": 256, "height": 256},
            {"task": "sdxl", "prompt": "x", "width": 256, "height": 256, "steps": 2},
            {"task": "img2img", "prompt": "x", "image": png_data_url(256, 256), "steps": 2},
            {"task": "svd", "image": png_data_url(256, 192), "width": 128, "height": 64, "num_frames": 3,
             "steps": 2, "output_format": "gif"},
        )]
        jobs = [wait_status(client, job_id, {"succeeded", "failed", "canceled"}, timeout=90) for job_id in ids]
    assert [j["status"] for j in jobs] == ["succeeded"] * 4, jobs
    return stack


def scrape(url: str) -> str:
    r = httpx.get(url, timeout=10)
    r.raise_for_status()
    return r.text
