"""Jobs end to end with S3 storage: API and worker processes, a real S3-protocol server, presigned
redirects. The API stores the input image in the bucket, the worker reads it there and uploads its
results, and GET /results answers 307 to a presigned URL on the public endpoint."""

from __future__ import annotations

import io
from urllib.parse import parse_qs, urlparse

import av
import httpx
import pytest
from PIL import Image

from tests.conftest import png_data_url, wait_status

DONE = {"succeeded", "failed", "canceled"}


def run(client: httpx.Client, body: dict) -> dict:
    r = client.post("/generate", json=body)
    assert r.status_code == 202, r.text
    job = wait_status(client, r.json()["id"], DONE, timeout=90)
    assert job["status"] == "succeeded", job
    return job


def follow(client: httpx.Client, url: str, public_port: int) -> httpx.Response:
    """GET a result URL through the API: a 307 to a presigned URL on the public endpoint, then that URL."""
    r = client.get(url, follow_redirects=False)
    assert r.status_code == 307, r.text
    assert r.headers["cache-control"] == "no-store"
    location = r.headers["location"]
    parsed = urlparse(location)
    assert (parsed.hostname, parsed.port) == ("localhost", public_port)
    query = parse_qs(parsed.query)
    assert query["X-Amz-Expires"] == ["600"] and "X-Amz-Signature" in query
    got = httpx.get(location)
    assert got.status_code == 200
    return got


@pytest.fixture
def client(s3_stack):
    stack, _ = s3_stack
    with stack.client() as c:
        yield c


def objects(s3, bucket: str, job_id: str) -> dict[str, str]:
    c = s3.client()
    keys = [o["Key"] for o in c.list_objects_v2(Bucket=bucket, Prefix=f"{job_id}/").get("Contents", [])]
    return {k.split("/", 1)[1]: c.head_object(Bucket=bucket, Key=k)["ContentType"] for k in keys}


def test_image_jobs_store_in_the_bucket_and_redirect(client, s3, s3_stack):
    stack, bucket = s3_stack
    job = run(client, {"task": "turbo", "prompt": "a fox", "num_images": 2, "width": 256, "height": 256,
                       "output_format": "webp"})
    assert objects(s3, bucket, job["id"]) == {"0.webp": "image/webp", "1.webp": "image/webp"}
    for item in job["result"]["images"]:
        got = follow(client, item["url"], s3.port)
        assert got.headers["content-type"] == "image/webp"
        assert Image.open(io.BytesIO(got.content)).size == (256, 256)
    # No process made a local results directory: API and worker both use the bucket.
    assert not (stack.logs.parent / "results").exists()


def test_img2img_reads_its_input_from_the_bucket(client, s3, s3_stack):
    _, bucket = s3_stack
    job = run(client, {"task": "img2img", "prompt": "a watercolor", "image": png_data_url(264, 200), "steps": 4})
    stored = objects(s3, bucket, job["id"])
    assert stored == {"input.png": "image/png", "0.png": "image/png"}
    # The input image is served the same way as the results.
    got = follow(client, job["params"]["image"]["url"], s3.port)
    assert Image.open(io.BytesIO(got.content)).size == (264, 200)
    got = follow(client, job["result"]["images"][0]["url"], s3.port)
    assert Image.open(io.BytesIO(got.content)).size == (264, 200)


def test_sdxl_with_refiner(client, s3, s3_stack):
    _, bucket = s3_stack
    job = run(client, {"task": "sdxl", "prompt": "a lighthouse", "width": 256, "height": 256, "steps": 4,
                       "output_format": "jpeg"})
    assert job["params"]["refiner"] is True
    assert objects(s3, bucket, job["id"]) == {"0.jpg": "image/jpeg"}
    got = follow(client, job["result"]["images"][0]["url"], s3.port)
    assert Image.open(io.BytesIO(got.content)).format == "JPEG"


def test_svd_video_in_the_bucket(client, s3, s3_stack):
    _, bucket = s3_stack
    job = run(client, {"task": "svd", "image": png_data_url(512, 288), "width": 256, "height": 192,
                       "num_frames": 6, "fps": 9, "steps": 3, "decode_chunk_size": 4})
    assert objects(s3, bucket, job["id"]) == {"input.png": "image/png", "video.mp4": "video/mp4"}
    got = follow(client, job["result"]["video"]["url"], s3.port)
    assert got.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(got.content)) as container:
        stream = container.streams.video[0]
        assert sum(1 for _ in container.decode(stream)) == 6
        assert (stream.width, stream.height) == (256, 192)


def test_unknown_result_is_a_404_not_a_redirect(client, s3_stack):
    job = run(client, {"task": "turbo", "prompt": "x", "width": 256, "height": 256})
    r = client.get(f"/results/{job['id']}/7.png", follow_redirects=False)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.get("/results/00000000-0000-4000-8000-000000000000/0.png", follow_redirects=False)
    assert r.status_code == 404
    r = client.get(f"/results/{job['id']}/..%2F..%2Fetc", follow_redirects=False)
    assert r.status_code == 404
