"""A real S3-protocol server for tests: moto's server mode on a free local port, in a thread.

It speaks S3 over HTTP like MinIO or AWS does, so boto3 in the test process and in API and worker
processes talk to it exactly as they would to a real store. (It does not enforce presigned-URL
expiry or signatures on GET: tests check those URLs' parameters instead.) `put_delay_s` makes each
upload that much slower, to stand for a real object store's latency (bench/duty.py).
"""

from __future__ import annotations

import contextlib
import time
import uuid

import boto3
from botocore.config import Config

from tests.conftest import free_port

ACCESS_KEY, SECRET_KEY, REGION = "fresco-test-key", "fresco-test-secret", "us-east-1"


def delayed_puts(app, seconds: float):
    """A WSGI app that answers each PUT (an upload) `seconds` later than `app` does."""

    def delayed(environ, start_response):
        if environ.get("REQUEST_METHOD") == "PUT":
            time.sleep(seconds)
        return app(environ, start_response)

    return delayed


class S3Server:
    def __init__(self, put_delay_s: float = 0.0):
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from moto.server import ThreadedMotoServer
        from werkzeug.serving import make_server

        class Server(ThreadedMotoServer):
            def _server_entry(self) -> None:  # moto's own, with the app wrapped
                app = DomainDispatcherApplication(create_backend_app)
                self._server = make_server(self._ip_address, self._port, delayed_puts(app, put_delay_s), True,
                                           request_handler=MotoRequestHandler)
                self._server_ready_event.set()
                self._server.serve_forever()

        self.port = free_port()
        self.server = (Server if put_delay_s else ThreadedMotoServer)(ip_address="127.0.0.1", port=self.port,
                                                                     verbose=False)
        self.server.start()
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def client(self, endpoint: str | None = None):
        return boto3.client("s3", endpoint_url=endpoint or self.endpoint, region_name=REGION,
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))

    def new_bucket(self) -> str:
        name = f"fresco-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def env(self, bucket: str, **extra: str) -> dict[str, str]:
        """FRESCO_S3_* for API and worker processes using this server."""
        return {"FRESCO_S3_BUCKET": bucket, "FRESCO_S3_ENDPOINT_URL": self.endpoint, "FRESCO_S3_REGION": REGION,
                "FRESCO_S3_ACCESS_KEY_ID": ACCESS_KEY, "FRESCO_S3_SECRET_ACCESS_KEY": SECRET_KEY,
                "FRESCO_S3_ADDRESSING_STYLE": "path", **extra}

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.server.stop()
