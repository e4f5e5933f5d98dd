# The two commands: `make run` (the whole service on this machine) and `make test` (the whole suite).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch comes first, pinned: on our machines 2.13.0 is a local CPU wheel, and an unpinned torch would pull
# a multi-GB CUDA build. On a GPU host, override it: make TORCH_SPEC='torch' ...
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= api,worker,local,dev
# The model `make run` serves; a hub id or a local directory. Offline: MODEL=tests/fixtures/tiny_blip
MODEL ?=
PORT ?= 8000

.PHONY: install run test lint unit clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet '$(TORCH_SPEC)'
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
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

clean:
	rm -rf $(VENV) .captioner-data .pytest_cache .mypy_cache .ruff_cache
