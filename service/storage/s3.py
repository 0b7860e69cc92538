"""Results and inputs in S3-compatible object storage (AWS S3, MinIO, Ceph RGW, R2, GCS's S3 API).

The same small protocol as `LocalStorage` (put / get / local_path / delete_job), plus `url_for`: a
presigned, expiring GET URL that the API answers `GET /results/{id}/{name}` with (307), so result
bytes never pass through the API. Objects live under `<prefix><job id>/<name>`; keys are checked with
the same rules as local files, so nothing outside a job's folder can be named.

Two endpoints: `endpoint_url` is where the API and workers reach the store (inside the cluster, e.g.
`http://minio:9000`); `public_endpoint_url` is what clients reach (e.g. `https://s3.example.com`).
SigV4 signs the host, so URLs for clients are presigned against the public endpoint. Presigning is
local computation: no request to the store. Only boto3 is needed, and only when S3 is configured.
"""

from __future__ import annotations

from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from service.storage.names import content_type_for, valid_job_id, valid_key

_MISSING = {"404", "NoSuchKey", "NotFound"}


def _missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code")) in _MISSING


class S3Storage:
    def __init__(self, bucket: str, *, endpoint_url: str | None = None, public_endpoint_url: str | None = None,
                 region: str | None = None, access_key_id: str | None = None,
                 secret_access_key: str | None = None, prefix: str = "", presign_expires_s: int = 3600,
                 addressing_style: str = "auto"):
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.presign_expires_s = presign_expires_s
        # Credentials: the given keys, else boto3's chain (AWS_* variables, IRSA / workload identity,
        # instance profile). Path-style addressing suits MinIO and other self-hosted stores.
        config = Config(signature_version="s3v4", retries={"max_attempts": 5, "mode": "standard"},
                        s3={"addressing_style": addressing_style}, max_pool_connections=32)
        session = boto3.session.Session(aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key,
                                        region_name=region)
        self.client = session.client("s3", endpoint_url=endpoint_url, config=config)
        public = public_endpoint_url or endpoint_url
        self.presigner = self.client if public == endpoint_url else \
            session.client("s3", endpoint_url=public, config=config)

    @classmethod
    def from_settings(cls, settings) -> "S3Storage":
        return cls(settings.s3_bucket, endpoint_url=settings.s3_endpoint_url,
                   public_endpoint_url=settings.s3_public_endpoint_url, region=settings.s3_region,
                   access_key_id=settings.s3_access_key_id, secret_access_key=settings.s3_secret_access_key,
                   prefix=settings.s3_prefix, presign_expires_s=settings.s3_presign_expires_s,
                   addressing_style=settings.s3_addressing_style)

    def key(self, job_id: str, name: str) -> str:
        if not valid_key(job_id, name):
            raise KeyError(name)
        return f"{self.prefix}{job_id}/{name}"

    def put(self, job_id: str, name: str, data: bytes) -> None:
        """One PUT: S3 makes the object visible whole or not at all, as LocalStorage's rename does."""
        key = self.key(job_id, name)
        self.client.put_object(Bucket=self.bucket, Key=key, Body=bytes(data), ContentType=content_type_for(name))

    def get(self, job_id: str, name: str) -> bytes:
        key = self.key(job_id, name)
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(key) from None
            raise

    def local_path(self, job_id: str, name: str) -> Path | None:
        """Objects have no local path: the API redirects to `url_for` instead."""
        return None

    def exists(self, job_id: str, name: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(job_id, name))
            return True
        except KeyError:
            return False
        except ClientError as exc:
            if _missing(exc):
                return False
            raise

    def url_for(self, job_id: str, name: str) -> str | None:
        """A presigned GET URL that expires after `presign_expires_s`, or None when there is no such
        object (one HEAD request, so an unknown file is a 404 from Fresco, not an XML error from S3)."""
        if not self.exists(job_id, name):
            return None
        return self.presigner.generate_presigned_url(
            "get_object", ExpiresIn=self.presign_expires_s,
            Params={"Bucket": self.bucket, "Key": self.key(job_id, name),
                    "ResponseContentType": content_type_for(name)})

    def jobs_older_than(self, seconds: float) -> list[str]:
        """Nothing: the bucket's lifecycle rule expires objects (see deploy/README.md)."""
        return []

    def delete(self, job_id: str, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key(job_id, name))

    def delete_job(self, job_id: str) -> None:
        if not valid_job_id(job_id):  # a UUID, nothing else: never a prefix wider than one job
            return
        prefix = f"{self.prefix}{job_id}/"
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if objects:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})

    def ensure_bucket(self) -> None:
        """Create the bucket when it is missing (compose and tests; production buckets are made by IaC)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if not _missing(exc) and str(exc.response.get("Error", {}).get("Code")) != "NoSuchBucket":
                raise
            region = self.client.meta.region_name
            extra = {"CreateBucketConfiguration": {"LocationConstraint": region}} \
                if region and region != "us-east-1" else {}
            self.client.create_bucket(Bucket=self.bucket, **extra)
