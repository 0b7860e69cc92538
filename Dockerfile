# syntax=docker/dockerfile:1.7
# Fresco images, two targets from one file:
#
#   docker build --target api    -t fresco-api .     # the HTTP API: no torch, small, starts in < 1 s
#   docker build --target worker -t fresco-worker .  # a GPU worker: CUDA runtime, CUDA torch, diffusers
#
# Both run as the non-root user `fresco` (uid 10001) from a virtual environment in /opt/fresco.
# The worker's torch build is chosen with build arguments (see deploy/README.md):
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 --build-arg TORCH_VERSION=2.13.0

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

# ---------------------------------------------------------------- api

FROM ${PYTHON_IMAGE} AS api-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/fresco
COPY pyproject.toml README.md /src/
COPY service /src/service
COPY workers /src/workers
# The API's dependencies and boto3 for object storage; the build fails if torch crept in.
RUN /opt/fresco/bin/pip install '/src[s3]' \
 && if /opt/fresco/bin/python -c "import torch" 2>/dev/null; then echo "torch must not be in the api image" >&2; exit 1; fi \
 && /opt/fresco/bin/python -c "import service.api.app, service.storage.s3"

FROM ${PYTHON_IMAGE} AS api
RUN groupadd --system --gid 10001 fresco \
 && useradd --system --uid 10001 --gid fresco --home-dir /var/lib/fresco --create-home --shell /usr/sbin/nologin fresco
COPY --from=api-build /opt/fresco /opt/fresco
ENV PATH=/opt/fresco/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FRESCO_HOST=0.0.0.0 \
    FRESCO_PORT=8000 \
    FRESCO_DATA_DIR=/var/lib/fresco \
    FRESCO_LOG_FORMAT=json
WORKDIR /var/lib/fresco
# Results live here when no S3 bucket is configured (share the volume with the workers then).
VOLUME ["/var/lib/fresco"]
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('FRESCO_PORT', '8000'), timeout=2)"]
CMD ["fresco", "api"]

# ---------------------------------------------------------------- worker

FROM ${CUDA_IMAGE} AS worker-base
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

FROM worker-base AS worker-build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/fresco \
 && /opt/fresco/bin/pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md /src/
COPY service /src/service
COPY workers /src/workers
# torch first (the CUDA build above), then Fresco's worker extra, which leaves that torch in place, then
# spandrel (the upscalers' loader) without its torchvision requirement (pyproject.toml says why);
# workers/spandrel_import.py imports it either way. A matching torchvision (same index URL, the version
# paired with TORCH_VERSION) may be added with TORCHVISION_VERSION; it is used where it imports.
# Quantized weights (`quantize:` in the models file): torchao (the `quant` extra, no torch requirement) and,
# for `nf4`, bitsandbytes, pinned: its torch>=2.4,<3 is met by the CUDA torch above, so it pulls no other.
ARG SPANDREL_VERSION=0.4.2
ARG TORCHVISION_VERSION=
ARG BITSANDBYTES_VERSION=0.50.2
RUN /opt/fresco/bin/pip install '/src[worker,quant,s3]' "bitsandbytes==${BITSANDBYTES_VERSION}" \
 && /opt/fresco/bin/pip install --no-deps "spandrel==${SPANDREL_VERSION}" \
 && if [ -n "${TORCHVISION_VERSION}" ]; then /opt/fresco/bin/pip install --no-deps --index-url "${TORCH_INDEX_URL}" \
      "torchvision==${TORCHVISION_VERSION}"; fi \
 && /opt/fresco/bin/python -c "import torch, sys; sys.exit(0 if torch.version.cuda else 'torch is not a CUDA build')" \
 && /opt/fresco/bin/python -c "import diffusers, torchao, bitsandbytes, workers.jobs, workers.worker, service.storage.s3" \
 && /opt/fresco/bin/python -c "from workers.spandrel_import import spandrel; spandrel()"

FROM worker-base AS worker
RUN groupadd --system --gid 10001 fresco \
 && useradd --system --uid 10001 --gid fresco --home-dir /var/lib/fresco --create-home --shell /usr/sbin/nologin fresco \
 && mkdir -p /var/cache/huggingface /models \
 && chown fresco:fresco /var/cache/huggingface /models
COPY --from=worker-build /opt/fresco /opt/fresco
ENV PATH=/opt/fresco/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/var/cache/huggingface \
    FRESCO_DATA_DIR=/var/lib/fresco \
    FRESCO_WORKER_METRICS_PORT=9101 \
    FRESCO_METRICS_HOST=0.0.0.0 \
    FRESCO_LOG_FORMAT=json \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /var/lib/fresco
# The Hugging Face cache (weights downloaded by hub id) and local weights (/models) are volumes.
VOLUME ["/var/cache/huggingface", "/var/lib/fresco"]
USER 10001:10001
EXPOSE 9101
# The metrics server starts once every model is loaded: healthy means ready to take jobs.
# Loading real weights (or downloading them on a first start) takes minutes, hence the start period.
HEALTHCHECK --interval=15s --timeout=5s --start-period=900s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/metrics' % os.environ.get('FRESCO_WORKER_METRICS_PORT', '9101'), timeout=4)"]
# SIGTERM: a warm shutdown, the running job finishes first; give it the longest job's time.
STOPSIGNAL SIGTERM
CMD ["fresco", "worker"]
