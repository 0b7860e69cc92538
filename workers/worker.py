"""The GPU worker process: an RQ SimpleWorker (never a forking one) with resident models.

Models load once, before the first job is taken; a heartbeat thread keeps the worker visible (during
jobs too) so the API knows which tasks and models are live. The worker listens on one RQ queue per
task and model it has loaded, so it never takes a job it cannot run.
"""

from __future__ import annotations

import logging
import os
import threading

from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from service import heartbeats
from service.catalog import load_catalog
from service.jobstore import queue_name
from service.logs import configure_logging
from service.redis_conn import EmbeddedRedis, sync_client
from service.settings import Settings
from service.storage import storage_from_settings
from workers import metrics
from workers.jobs import Runtime

log = logging.getLogger("fresco.worker")
# Short jobs first: a worker serving every task takes a queued Turbo job before a queued video.
QUEUE_ORDER = ("turbo", "img2img", "sdxl", "svd")


class FrescoWorker(SimpleWorker):
    """Runs each job in this process, where the models already are."""

    def __init__(self, *args, runtime: Runtime, **kwargs):
        kwargs.setdefault("serializer", JSONSerializer)
        super().__init__(*args, **kwargs)
        self.runtime = runtime

    def heartbeat(self, timeout: int | None = None, pipeline=None):
        """RQ's worker heartbeat (three commands, sent before and after every job) in one round trip."""
        if pipeline is not None:
            return super().heartbeat(timeout, pipeline=pipeline)
        with self.connection.pipeline(transaction=False) as pipe:
            super().heartbeat(timeout, pipeline=pipe)
            pipe.execute()


class Heartbeat(threading.Thread):
    def __init__(self, redis_url: str, name: str, runtime: Runtime, settings: Settings):
        super().__init__(name="fresco-heartbeat", daemon=True)
        self.redis = sync_client(redis_url)
        self.worker_name, self.runtime, self.settings = name, runtime, settings
        self.stopped = threading.Event()

    def info(self) -> dict:
        return {"tasks": self.runtime.tasks, "models": sorted(self.runtime.models), "serves": self.runtime.serves,
                "pid": os.getpid(),
                "job": self.runtime.current_job, "jobs": list(self.runtime.current_jobs)}

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                heartbeats.beat(self.redis, self.worker_name, self.info(), self.settings.heartbeat_ttl_s)
            except Exception as exc:  # Redis away: keep trying, the worker itself carries on
                log.warning("heartbeat failed: %s", type(exc).__name__)
            self.stopped.wait(self.settings.heartbeat_interval_s)

    def stop(self) -> None:
        self.stopped.set()
        try:
            heartbeats.forget(self.redis, self.worker_name)
        except Exception:
            pass


def main(settings: Settings) -> int:
    configure_logging(settings)
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    embedded = None
    url = settings.redis_url
    if not url:
        embedded = EmbeddedRedis(settings.data_dir)
        url = embedded.url
    connection = sync_client(url, socket_timeout=None)
    name = settings.default_worker_name
    catalog = load_catalog(settings.models_file)
    runtime = Runtime(settings, catalog, sync_client(url), storage_from_settings(settings), name).load().warm_up()
    runtime.install()
    metrics.serve(settings.worker_metrics_port)
    pairs = sorted(runtime.pipelines, key=lambda pair: QUEUE_ORDER.index(pair[0]))
    if not pairs:
        log.error("no models serve the tasks %s in this catalogue", settings.worker_tasks)
        return 2
    heartbeat = Heartbeat(url, name, runtime, settings)
    heartbeat.start()
    queues = [Queue(queue_name(t, m), connection=connection, serializer=JSONSerializer) for t, m in pairs]
    worker = FrescoWorker(queues, connection=connection, name=name, runtime=runtime)
    log.info("worker %s serving %s (metrics on :%s)", name, runtime.serves,
             settings.worker_metrics_port or "off")
    try:
        # RQ logs four lines at INFO per job; Fresco logs its own one (job id, task, outcome, time).
        level = settings.log_level.upper()
        worker.work(with_scheduler=False, logging_level="WARNING" if level == "INFO" else level)
    finally:
        heartbeat.stop()
        if embedded:
            embedded.close()
    return 0
