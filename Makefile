# Fresco: `make run` serves locally, `make test` runs the whole suite. Both set everything up first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines get this torch; a GPU host installs its own CUDA build into $(VENV) first (see README),
# and then nothing here replaces it.
TORCH ?= torch==2.13.0
# The upscalers' loader, without its torchvision requirement (pyproject.toml's worker extra says why).
SPANDREL ?= spandrel==0.4.2
EXTRAS ?= local,worker,quant,s3,test
PYTEST_ARGS ?=
# The suite runs in this many processes (pytest-xdist): much of it waits on the processes it starts, so three
# keep two cores busy. Tests that share a stack, and the fault tests, stay together in one
# (tests/scheduling.py). 0: one process, no xdist.
TEST_PROCESSES ?= 3
XDIST := $(if $(filter 0,$(TEST_PROCESSES)),,-n $(TEST_PROCESSES) --dist loadgroup)

.PHONY: install run test test-fast clean deploy-tools browser

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install $(TORCH)
	$(BIN)/python -m pip install -e '.[$(EXTRAS)]'
	$(if $(findstring worker,$(EXTRAS)),$(BIN)/python -m pip install --no-deps $(SPANDREL))
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/fresco up

# Debian packages some tests need: installed when missing and this is root with apt-get; elsewhere the
# tests that need them skip and say why. $(1): the packages, $(2): the shell test that they are there.
define apt-install
	@if $(2); then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y --no-install-recommends $(1) >/dev/null 2>&1 || \
	  { apt-get update >/dev/null && apt-get install -y --no-install-recommends $(1) >/dev/null; } || \
	  echo "make: could not install $(1); the tests that need it will skip"; \
	else echo "make: $(1) not installed (needs root and apt-get); the tests that need it will skip"; fi
endef

# The deployment tests run Debian's promtool and prometheus, and docker-compose's `config`.
DEPLOY_TOOLS ?= prometheus docker-compose
deploy-tools:
	$(call apt-install,$(DEPLOY_TOOLS),command -v promtool >/dev/null && command -v prometheus >/dev/null && \
	  { command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1; })

# The playground's tests (tests/e2e/test_playground.py) drive Debian's chromium through Playwright (the
# browsers Playwright would download are out of reach here, and not needed).
BROWSER ?= chromium
browser:
	$(call apt-install,$(BROWSER),command -v chromium >/dev/null)

test: install deploy-tools browser
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

# The quick part while you work: everything but the fault, deployment and bench groups (markers).
test-fast: install
	$(BIN)/python -m pytest $(XDIST) -m "not (faults or deploy or bench)" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .fresco .pytest_cache *.egg-info

# Benchmarks (BENCHMARKS.md): run by hand, each prints its figures next to its target. Not tests.
.PHONY: bench bench-overhead bench-throughput bench-memory bench-batching bench-adapters bench-previews bench-gpu \
	bench-enqueue bench-duty bench-train bench-edit
bench: bench-overhead bench-throughput bench-memory bench-batching bench-adapters bench-previews bench-duty \
	bench-train bench-edit

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

bench-previews: install
	$(BIN)/python bench/previews.py

bench-duty: install
	$(BIN)/python bench/duty.py

# LoRA training, tiny SD and SDXL: Fresco's trainer against a bare diffusers + peft loop (`TRAIN_ARGS=--quick`).
TRAIN_ARGS ?=
bench-train: install
	$(BIN)/python -m bench.train $(TRAIN_ARGS)

# Editing, tiny profile: inpaint against img2img, mask_padding against the whole canvas, upscale tiled against whole.
EDIT_ARGS ?=
bench-edit: install
	$(BIN)/python bench/edit.py $(EDIT_ARGS)

# `make run`'s enqueue rate under `hey -c 32` (apt-get install hey), against another checkout side by side:
# `make bench-enqueue AGAINST=/tmp/orig` (e.g. `git worktree add /tmp/orig <commit>`).
AGAINST ?=
bench-enqueue: install
	$(BIN)/python bench/make_run_enqueue.py $(if $(AGAINST),--against $(AGAINST))

# Full-size models on a GPU host; `make bench-gpu GPU_ARGS=--tiny` runs the tiny CPU version.
GPU_ARGS ?=
bench-gpu: install
	$(BIN)/python bench/gpu.py $(GPU_ARGS)
