"""service/storage/s3.py S3Storage against a real S3-protocol server (moto's server mode, over HTTP):
the same behaviour as LocalStorage, plus presigned URLs that expire."""

from __future__ import annotations

import calendar
import time
import uuid
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

pytest.importorskip("boto3", reason="the s3 extra (boto3) is not installed")
pytest.importorskip("moto.server", reason="moto[server] (test extra) is not installed")

from service.storage.s3 import S3Storage  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.storage import LocalStorage, storage_from_settings  # noqa: E402
from tests.deploy.s3server import ACCESS_KEY, REGION, SECRET_KEY, S3Server  # noqa: E402

JOB = "3f2b8c1e-9a4d-4e6f-8b2a-1c0d9e8f7a6b"


@pytest.fixture(scope="module")
def s3():
    server = S3Server()
    yield server
    server.stop()


def make(s3: S3Server, bucket: str | None = None, **kwargs) -> S3Storage:
    return S3Storage(bucket or s3.new_bucket(), endpoint_url=s3.endpoint, region=REGION, access_key_id=ACCESS_KEY,
                     secret_access_key=SECRET_KEY, addressing_style="path", **kwargs)


@pytest.fixture
def store(s3) -> S3Storage:
    return make(s3)


def keys(store: S3Storage) -> list[str]:
    return sorted(o["Key"] for o in store.client.list_objects_v2(Bucket=store.bucket).get("Contents", []))


def test_put_get_round_trip_with_content_type(store):
    data = bytes(range(256)) * 10
    store.put(JOB, "0.png", data)
    store.put(JOB, "video.mp4", memoryview(b"mp4 bytes"))
    store.put(JOB, "input.webp", bytearray(b"RIFF"))
    assert store.get(JOB, "0.png") == data
    assert store.get(JOB, "video.mp4") == b"mp4 bytes"
    assert keys(store) == [f"{JOB}/0.png", f"{JOB}/input.webp", f"{JOB}/video.mp4"]
    head = store.client.head_object(Bucket=store.bucket, Key=f"{JOB}/video.mp4")
    assert head["ContentType"] == "video/mp4" and head["ContentLength"] == 9
    assert store.local_path(JOB, "0.png") is None  # never a local file: the API redirects instead


def test_missing_object(store):
    with pytest.raises(FileNotFoundError):
        store.get(JOB, "0.png")
    assert store.url_for(JOB, "0.png") is None
    assert not store.exists(JOB, "0.png")


@pytest.mark.parametrize("job_id,name", [(JOB, "../0.png"), (JOB, "a/b.png"), (JOB, ".hidden"), (JOB, ""),
                                         ("../" + JOB, "0.png"), ("not-a-uuid", "0.png"), (JOB, "0.png\n"),
                                         (JOB.upper(), "0.png")])
def test_bad_keys_refused_and_nothing_written(store, job_id, name):
    with pytest.raises(KeyError):
        store.put(job_id, name, b"x")
    with pytest.raises(KeyError):
        store.get(job_id, name)
    assert store.url_for(job_id, name) is None
    assert keys(store) == []


def test_delete_job_removes_only_that_job(store):
    other = str(uuid.uuid4())
    for name in ("0.png", "1.png", "input.png"):
        store.put(JOB, name, b"a")
    store.put(other, "0.png", b"kept")
    store.delete_job(JOB)
    assert keys(store) == [f"{other}/0.png"]
    store.delete_job(JOB)  # again: nothing there, no error
    for bad in ("", "..", "not-a-uuid", JOB[:8]):
        store.delete_job(bad)  # never a wider prefix than one job
    assert store.get(other, "0.png") == b"kept"


def test_prefix_keeps_objects_under_it(s3):
    store = make(s3, prefix="/fresco/results/")
    store.put(JOB, "0.png", b"p")
    assert keys(store) == [f"fresco/results/{JOB}/0.png"]
    assert store.get(JOB, "0.png") == b"p"
    store.delete_job(JOB)
    assert keys(store) == []


def test_presigned_url_fetches_the_object_and_expires(store):
    store.put(JOB, "0.webp", b"RIFF....WEBP")
    url = store.url_for(JOB, "0.webp")
    query = parse_qs(urlparse(url).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Expires"] == [str(store.presign_expires_s)] == ["3600"]
    assert query["X-Amz-Credential"][0].startswith(ACCESS_KEY + "/")
    signed_at = calendar.timegm(time.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ"))
    assert abs(signed_at - time.time()) < 60
    r = httpx.get(url)
    assert r.status_code == 200 and r.content == b"RIFF....WEBP"
    assert r.headers["content-type"] == "image/webp"
    # The bucket is private: the same object without a signature is refused.
    unsigned = url.split("?", 1)[0]
    assert httpx.get(unsigned).status_code == 403


def test_presign_expiry_and_public_endpoint_from_settings(s3):
    """Clients follow URLs to the public endpoint; SigV4 signs the host, so they are signed for it."""
    bucket = s3.new_bucket()
    public = f"http://localhost:{s3.port}"
    settings = Settings(**{k.removeprefix("FRESCO_").lower(): v for k, v in s3.env(bucket).items()},
                        s3_public_endpoint_url=public, s3_presign_expires_s=120)
    store = storage_from_settings(settings)
    assert isinstance(store, S3Storage)
    store.put(JOB, "0.png", b"png")
    url = store.url_for(JOB, "0.png")
    assert url.startswith(f"{public}/{bucket}/{JOB}/0.png?")
    assert parse_qs(urlparse(url).query)["X-Amz-Expires"] == ["120"]
    assert httpx.get(url).content == b"png"


def test_storage_from_settings_is_local_without_a_bucket(tmp_path):
    store = storage_from_settings(Settings(data_dir=tmp_path))
    assert isinstance(store, LocalStorage)
    assert store.url_for(JOB, "0.png") is None


def test_presign_expiry_bounds():
    with pytest.raises(ValueError):
        Settings(s3_bucket="b", s3_presign_expires_s=7 * 24 * 3600 + 1)  # past SigV4's 7 days
    with pytest.raises(ValueError):
        Settings(s3_bucket="b", s3_presign_expires_s=0)


def test_ensure_bucket_creates_it_once(s3):
    store = make(s3, bucket=f"fresco-new-{uuid.uuid4().hex[:8]}")
    store.ensure_bucket()
    store.ensure_bucket()  # already there: no error
    store.put(JOB, "0.png", b"x")
    assert keys(store) == [f"{JOB}/0.png"]
