# FlowForge developer commands. `make run` and `make test` work on a bare machine with Python 3.11+.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
PYTEST_WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help install run test test-fast proto proto-check lint typecheck check bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install FlowForge with its dev tools

run: $(STAMP) ## start auth, workflow, execution and the edge on the embedded default (Ctrl-C stops all)
	$(PY) tools/devrun.py

test: $(STAMP) ## run the whole suite (SQLite and PostgreSQL backends)
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile

BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) ## benchmark on PostgreSQL: the engine (W0-W3), the edge (W4, W5) and the peers; prints one table
	$(PY) tools/bench.py $(BENCH_ARGS)

proto: $(STAMP) ## regenerate generated/ from proto/
	$(PY) tools/gen_proto.py

proto-check: proto ## fail when generated/ is stale
	git diff --exit-code --stat -- generated/
	@test -z "$$(git status --porcelain -- generated/)" || (git status --porcelain -- generated/; echo 'generated/ has untracked changes: run make proto and commit'; exit 1)

lint: $(STAMP) ## ruff, and buf lint on the protos
	$(BIN)/ruff check .
	PY=$(PY) bash tools/buf_lint.sh

typecheck: $(STAMP) ## mypy strict on our packages
	$(BIN)/mypy

check: proto-check lint typecheck test ## everything CI runs

clean: ## remove the virtualenv and embedded data
	rm -rf $(VENV) .flowforge .pytest_cache .mypy_cache .ruff_cache
