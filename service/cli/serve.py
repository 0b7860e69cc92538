"""`fresco api` and `fresco worker`: one process of a real deployment each, run apart against a shared
Redis. `cmd_worker` imports workers/ inside the function, as `fresco convert` does (tools.py), so that
the API process never loads it.
"""

from __future__ import annotations

from pathlib import Path

from service.config_errors import EX_CONFIG, ConfigError
from service.settings import Settings


def config_error(command: str, error: ConfigError) -> int:
    """Say what is misconfigured in one line (no traceback), and the exit code `fresco up` does not restart."""
    import logging

    logging.getLogger(f"fresco.{command}").critical("configuration error: %s", error)
    return EX_CONFIG


def _multiprocess_metrics_dir() -> tuple[str, bool]:
    """A fresh directory for prometheus_client's multiprocess files, so counters sum over every API
    process (service/api/metrics.py). A PROMETHEUS_MULTIPROC_DIR given by the operator is used, emptied of
    an earlier run's files; else a temporary one, removed on exit. Set before any process imports
    prometheus_client (uvicorn's processes inherit the environment)."""
    import os
    import tempfile

    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for old in path.glob("*.db"):
            old.unlink(missing_ok=True)
        return str(path), False
    path = tempfile.mkdtemp(prefix="fresco-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path, True


def cmd_api(settings: Settings, args) -> int:
    import importlib.util
    import os
    import shutil

    import uvicorn

    from service.logs import configure_logging

    configure_logging(settings)
    from service.catalog import load_catalog
    from service.config_errors import CONFIG_ERRORS

    try:
        load_catalog(settings.models_file)  # as create_app will, in each process: said here once, in one line
    except CONFIG_ERRORS as exc:
        return config_error("api", ConfigError.of(exc))
    processes = args.processes or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    metrics_dir, temporary = _multiprocess_metrics_dir() if processes > 1 else (None, False)
    # uvloop and httptools (uvicorn[standard]) when installed: the fastest event loop and HTTP parser.
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "auto"
    http = "httptools" if importlib.util.find_spec("httptools") else "auto"
    try:
        uvicorn.run("service.api.app:create_app", factory=True, host=settings.host, port=settings.port,
                    workers=processes, loop=loop, http=http, access_log=args.access_log, backlog=args.backlog,
                    log_level=settings.log_level.lower(), timeout_graceful_shutdown=30, log_config=None)
    finally:
        if temporary and metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def cmd_worker(settings: Settings, args) -> int:
    from workers import tuning

    tuning.tune_process()  # before torch is imported: the allocator and OpenMP settings it reads
    from workers.worker import main

    try:
        return main(settings)
    except ConfigError as exc:  # met at start-up: a bad models file, a model that cannot load as configured
        return config_error("worker", exc)
