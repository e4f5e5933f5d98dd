# The two commands: `make run` (the whole service on this machine) and `make test` (the whole suite).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Every dependency but torch, direct and transitive, pinned with hashes; `make lock` refreshes it on purpose.
LOCK := requirements/lock.txt
# torch comes first, from its own spec: on our machines 2.13.0 is a local CPU wheel, and an unpinned torch would
# pull a multi-GB CUDA build. On a GPU host, name the CUDA build: make TORCH_SPEC='torch==2.13.0' ...
TORCH_SPEC ?= torch==2.13.0
# Where `make lock` finds the CPU build of torch, whose dependencies the lock pins (pip's find-links here).
TORCH_FIND_LINKS ?= $(or $(PIP_FIND_LINKS),https://download.pytorch.org/whl/cpu/torch/)
# The model `make run` serves; a hub id or a local directory. Offline: MODEL=tests/fixtures/tiny_blip
MODEL ?=
PORT ?= 8000

.PHONY: install run test lint unit lock clean

install: $(STAMP)

# A fresh environment whenever the lock changes, so nothing installed before can stand in for what it pins.
$(STAMP): $(LOCK) pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet '$(TORCH_SPEC)'
	$(BIN)/pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/captioner up --port $(PORT) $(if $(MODEL),--model $(MODEL))

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy .

test: lint
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest tests/unit

# Resolve pyproject.toml's ranges anew: the newest releases they admit, for Python 3.11 on any platform.
# torch is resolved (its CPU build) so that its own dependencies are pinned, but left out: TORCH_SPEC installs it.
# uv runs from a venv of its own, so that a pyproject.toml the current lock does not satisfy can still be locked.
UV_VERSION := 0.13.9
UV := .venv-lock/bin/uv
UV_COMPILE = $(UV) pip compile pyproject.toml --quiet --universal --python-version 3.11 --generate-hashes \
	--upgrade --find-links $(TORCH_FIND_LINKS) --constraint requirements/torch-cpu.txt --no-emit-package torch
lock: $(UV)
	$(UV_COMPILE) --all-extras --output-file $(LOCK)
	$(UV_COMPILE) --extra api --constraint $(LOCK) --output-file requirements/api.txt
	$(UV_COMPILE) --extra worker --constraint $(LOCK) --output-file requirements/worker.txt
	@echo "Locked. Run 'make test' on the new lock before committing it."

$(UV):
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet 'uv==$(UV_VERSION)'

clean:
	rm -rf $(VENV) .venv-lock .captioner-data .pytest_cache .mypy_cache .ruff_cache
