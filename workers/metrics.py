"""Worker metrics, served on the worker's own /metrics port. `fresco_` prefix, base units."""

from __future__ import annotations

import sys

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

REGISTRY = CollectorRegistry(auto_describe=True)

PHASE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

JOB_PHASE_SECONDS = Histogram(
    "fresco_job_phase_seconds", "Time a job spent in each phase: queue_wait, inference, encode, store.",
    ["task", "phase"], buckets=PHASE_BUCKETS, registry=REGISTRY)
JOBS_FINISHED = Counter(
    "fresco_jobs_finished_total", "Jobs this worker ended, by outcome (succeeded, failed code, canceled).",
    ["task", "outcome"], registry=REGISTRY)
MODEL_LOAD_SECONDS = Gauge(
    "fresco_model_load_seconds", "Seconds the model took to load at worker start.", ["model"], registry=REGISTRY)
MODEL_LOADS = Counter("fresco_model_loads_total", "Models loaded by this worker.", ["model"], registry=REGISTRY)
BUSY = Gauge("fresco_worker_busy", "1 while the worker runs a pipeline call.", registry=REGISTRY)
BUSY_SECONDS = Counter(
    "fresco_worker_busy_seconds_total", "Seconds the worker's pipeline calls ran: its rate is the device's duty "
    "(1 when a pipeline always runs).", registry=REGISTRY)
BATCH_SIZE = Histogram(
    "fresco_batch_images", "Images per pipeline call: 1 unbatched, more when compatible jobs ran together.",
    ["task"], buckets=(1, 2, 4, 8, 16, 32, 64), registry=REGISTRY)
ADAPTER_LOADS = Counter(
    "fresco_adapter_loads_total", "LoRAs loaded into a model (a cold load: not resident before).", ["model"],
    registry=REGISTRY)
ADAPTER_LOAD_SECONDS = Histogram(
    "fresco_adapter_load_seconds", "Seconds a cold LoRA load took (reading the file and loading the layers).",
    ["model"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=REGISTRY)
ADAPTER_CACHE = Counter(
    "fresco_adapter_cache_total", "Adapter lookups: `resident` (LoRAs loaded in the model) and `disk` (URL "
    "adapters fetched before), each a hit or a miss.", ["cache", "result"], registry=REGISTRY)
ADAPTERS_RESIDENT = Gauge(
    "fresco_adapters_resident", "LoRAs loaded in the model now (at most FRESCO_WORKER_MAX_LORAS).", ["model"],
    registry=REGISTRY)
ADAPTER_FETCH_BYTES = Counter(
    "fresco_adapter_fetch_bytes_total", "Bytes of adapter files fetched from request URLs.", registry=REGISTRY)
GPU_OOMS = Counter("fresco_gpu_oom_total", "Jobs that ran out of GPU memory.", ["task"], registry=REGISTRY)


class GpuMemoryCollector:
    """GPU memory per CUDA device of this worker, read from torch's caching allocator at scrape time.
    `allocated` is what tensors hold, `reserved` what the allocator keeps from the driver (what
    nvidia-smi shows for this process, less the CUDA context). On a CPU worker, or before CUDA is
    initialised, the families are there with no samples: a scrape never imports torch or starts CUDA."""

    FAMILIES = (
        ("fresco_gpu_memory_allocated_bytes", "GPU memory held by tensors (torch.cuda.memory_allocated)."),
        ("fresco_gpu_memory_reserved_bytes", "GPU memory reserved by torch's caching allocator."),
        ("fresco_gpu_memory_max_allocated_bytes", "Peak GPU memory held by tensors since the worker started."),
        ("fresco_gpu_memory_total_bytes", "Total memory of the GPU."),
    )

    def describe(self):
        return [GaugeMetricFamily(name, doc, labels=["device"]) for name, doc in self.FAMILIES]

    def collect(self):
        families = self.describe()
        torch = sys.modules.get("torch")
        try:
            if torch is not None and torch.cuda.is_initialized():
                for i in range(torch.cuda.device_count()):
                    device = f"cuda:{i}"
                    values = (torch.cuda.memory_allocated(i), torch.cuda.memory_reserved(i),
                              torch.cuda.max_memory_allocated(i), torch.cuda.get_device_properties(i).total_memory)
                    for family, value in zip(families, values):
                        family.add_metric([device], float(value))
        except Exception:  # a scrape must never fail because a device query did: no samples this time
            families = self.describe()
        return families


REGISTRY.register(GpuMemoryCollector())


def serve(port: int, host: str):
    """Serve /metrics on `host`:`port` (settings.metrics_listen_host: the API's host unless
    FRESCO_METRICS_HOST says otherwise, never every interface by default); the server, or None when `port` is 0."""
    if not port:
        return None
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    return server
