# Fresco: `make run` serves locally, `make test` runs the whole suite. Both set everything up first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines get this torch; a GPU host installs its own CUDA build into $(VENV) first (see README),
# and then nothing here replaces it.
TORCH ?= torch==2.13.0
EXTRAS ?= local,worker,test
PYTEST_ARGS ?=

.PHONY: install run test clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install $(TORCH)
	$(BIN)/python -m pip install -e '.[$(EXTRAS)]'
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/fresco up

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .fresco .pytest_cache *.egg-info
