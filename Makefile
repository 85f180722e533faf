# One task runner: the README's commands and CI call these recipes.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
GEN := orchestrator/api/_generated
CLIENT := clients/python

.PHONY: run test check lint typecheck proto bench simulate clean

$(BIN)/payorch: pyproject.toml $(CLIENT)/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' -e $(CLIENT)
	touch $@

## run: set up and run the service on its embedded default (SQLite + in-process sandbox)
run: $(BIN)/payorch
	$(BIN)/payorch serve

## test: set up and run the whole test suite (PostgreSQL tests skip with a message if none is reachable)
test: $(BIN)/payorch
	$(BIN)/pytest

## check: lint and type-check
check: lint typecheck
lint: $(BIN)/payorch
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
typecheck: $(BIN)/payorch
	$(BIN)/mypy orchestrator adapters $(CLIENT)/payorch_client

## proto: regenerate the gRPC code from protos/, the server's copy and the client's (the one
## recipe; tests check both are current)
proto: $(BIN)/payorch
	$(BIN)/python -m orchestrator.api.codegen $(GEN) $(CLIENT)/payorch_client/_generated

## simulate: the deterministic simulation on its own: SEEDS=A:B (default 0:10000), or one SEED=N
SEEDS ?= 0:10000
simulate: $(BIN)/payorch
	$(BIN)/python -m tests.simulation $(if $(SEED),--seed $(SEED) -v,--seeds $(SEEDS))

bench: $(BIN)/payorch
	$(BIN)/python bench/create_payment.py

clean:
	rm -rf $(VENV) build *.egg-info
