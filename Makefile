# Fresco: `make run` serves locally, `make test` runs the whole suite. Both set everything up first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines get this torch; a GPU host installs its own CUDA build into $(VENV) first (see README),
# and then nothing here replaces it.
TORCH ?= torch==2.13.0
EXTRAS ?= local,worker,s3,test
PYTEST_ARGS ?=

.PHONY: install run test test-fast clean deploy-tools

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install $(TORCH)
	$(BIN)/python -m pip install -e '.[$(EXTRAS)]'
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/fresco up

# The deployment tests run Debian's promtool and prometheus, and docker-compose's `config`. Installed
# here when missing and this is root with apt-get; elsewhere those tests skip and say why.
DEPLOY_TOOLS ?= prometheus docker-compose
deploy-tools:
	@if command -v promtool >/dev/null && command -v prometheus >/dev/null && \
	    { command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1; }; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y --no-install-recommends $(DEPLOY_TOOLS) >/dev/null 2>&1 || \
	  { apt-get update >/dev/null && apt-get install -y --no-install-recommends $(DEPLOY_TOOLS) >/dev/null; } || \
	  echo "make: could not install $(DEPLOY_TOOLS); the tests that need them will skip"; \
	else echo "make: $(DEPLOY_TOOLS) not installed (needs root and apt-get); the tests that need them will skip"; fi

test: install deploy-tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The quick part while you work: everything but the fault, deployment and bench groups (markers).
test-fast: install
	$(BIN)/python -m pytest -m "not (faults or deploy or bench)" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .fresco .pytest_cache *.egg-info

# Benchmarks (BENCHMARKS.md): run by hand, each prints its figures next to its target. Not tests.
.PHONY: bench bench-overhead bench-throughput bench-memory bench-batching bench-adapters bench-gpu
bench: bench-overhead bench-throughput bench-memory bench-batching bench-adapters

bench-overhead: install
	$(BIN)/python bench/overhead.py

bench-throughput: install
	$(BIN)/python bench/throughput.py

bench-memory: install
	$(BIN)/python bench/memory.py

bench-batching: install
	$(BIN)/python bench/batching.py

bench-adapters: install
	$(BIN)/python bench/adapters.py

# Full-size models on a GPU host; `make bench-gpu GPU_ARGS=--tiny` runs the tiny CPU version.
GPU_ARGS ?=
bench-gpu: install
	$(BIN)/python bench/gpu.py $(GPU_ARGS)
