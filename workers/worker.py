"""The GPU worker process: an RQ SimpleWorker (never a forking one) with resident models.

`main` is the start-up, in order: settings and logs, the models (workers/runtime.py, loaded and
warmed once; a configuration error met there is one line and exit 78, service/config_errors.py), Redis,
the job runner RQ calls (workers/jobs.py) and its finishing stage
(workers/finishing.py), metrics, a heartbeat thread that keeps
the worker visible during jobs too, and the RQ loop on one queue per task and model it has loaded,
so it never takes a job it cannot run. Process tuning (workers/tuning.py) happens before torch is
imported, in `service/cli/serve.py`.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable

from rq import SimpleWorker
from rq.serializers import JSONSerializer

from service.catalog import load_catalog
from service.config_errors import CONFIG_ERRORS, ConfigError
from service.jobs import heartbeats
from service.logs import configure_logging
from service.redis import EmbeddedRedis, sync_client
from service.settings import Settings
from service.storage import storage_from_settings
from workers import metrics, quiet
from workers.fair_queue import FairQueue
from workers.jobs import JobRunner
from workers.runtime import Runtime

log = logging.getLogger("fresco.worker")
UNSUBSCRIBE_WAIT_S = 1.0  # how long a stopping worker waits for RQ's command listener thread to end


class FrescoWorker(SimpleWorker):
    """Runs each job in this process, where the models already are."""

    def __init__(self, *args, runner: JobRunner | None = None, **kwargs):
        kwargs.setdefault("serializer", JSONSerializer)
        kwargs.setdefault("queue_class", FairQueue)
        super().__init__(*args, **kwargs)
        self.runner = runner

    def request_stop(self, signum, frame):
        """A warm shutdown (SIGTERM, Ctrl-C): the runner takes no job itself after the one in hand either."""
        if self.runner is not None:
            self.runner.stopping.set()
        super().request_stop(signum, frame)

    def unsubscribe(self):
        """RQ's, without an unbounded wait at exit: redis-py's listener thread, once unsubscribed, waits for a
        new subscription for RQ's whole `sleep_time` (60 s), and RQ's `stop()` joined it without a limit, so a
        worker asked to stop could hang up to a minute in its teardown. The thread is a daemon: leave it."""
        if self.pubsub_thread:
            self.pubsub.unsubscribe()
            self.pubsub_thread.stop(timeout=UNSUBSCRIBE_WAIT_S)

    def heartbeat(self, timeout: int | None = None, pipeline=None):
        """RQ's worker heartbeat (three commands, sent before and after every job) in one round trip."""
        if pipeline is not None:
            return super().heartbeat(timeout, pipeline=pipeline)
        with self.connection.pipeline(transaction=False) as pipe:
            super().heartbeat(timeout, pipeline=pipe)
            pipe.execute()


class Heartbeat(threading.Thread):
    """Fresco's own worker heartbeat (RQ's SimpleWorker sends none during a job): what the worker
    serves and runs, every `heartbeat_interval_s`, under a TTL key the reaper and /readyz read."""

    def __init__(self, redis_url: str, name: str, info: Callable[[], dict], settings: Settings):
        super().__init__(name="fresco-heartbeat", daemon=True)
        self.redis = sync_client(redis_url)
        self.worker_name, self.info, self.settings = name, info, settings
        self.stopped = threading.Event()

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
    quiet.silence_known_noise()
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    try:
        runtime = Runtime(settings, load_catalog(settings.models_file)).load()
    except CONFIG_ERRORS as exc:  # the models file, or a model that cannot load as it says: one line, exit 78
        raise ConfigError.of(exc) from exc
    if not runtime.pipelines:
        raise ConfigError(f"no model in the models file serves the tasks {settings.worker_tasks}"
                          + (f" among FRESCO_WORKER_MODELS {settings.worker_models}" if settings.worker_models else ""))
    runtime.warm_up()
    embedded = None
    url = settings.redis_url
    if not url:
        embedded = EmbeddedRedis(settings.data_dir)
        url = embedded.url
    name = settings.default_worker_name
    runner = JobRunner(runtime, sync_client(url), storage_from_settings(settings), settings, name).serve()
    metrics.serve(settings.worker_metrics_port, settings.metrics_listen_host)

    def info() -> dict:
        jobs = list(runner.current_jobs)
        return {"tasks": runtime.tasks, "models": sorted(runtime.models), "serves": runtime.serves,
                "pid": os.getpid(), "job": jobs[0] if jobs else None, "jobs": jobs}

    heartbeat = Heartbeat(url, name, info, settings)
    heartbeat.start()
    connection = sync_client(url, socket_timeout=None)
    queues = [FairQueue.of(t, m, connection=connection, serializer=JSONSerializer) for t, m in runtime.queues()]
    worker = FrescoWorker(queues, connection=connection, name=name, runner=runner)
    log.info("worker %s serving %s (metrics on :%s)", name, runtime.serves, settings.worker_metrics_port or "off")
    try:
        # RQ logs four lines at INFO per job; Fresco logs its own one (job id, task, outcome, time).
        level = settings.log_level.upper()
        worker.work(with_scheduler=False, logging_level="WARNING" if level == "INFO" else level)
    finally:
        try:
            runner.finisher.close()  # the jobs on the finishing stage end before the worker says it is gone
        finally:
            heartbeat.stop()
            if embedded:
                embedded.close()
    return 0
