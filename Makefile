# The two commands: `make demo` runs the main job, `make test` passes the tests.
# Both create .venv when missing and install with the pinned versions in constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Offline data: the GLUE copy beside the repo unless GLUE_DIR is already set.
export GLUE_DIR ?= $(abspath ../shared/data/glue)
export DISTILNAS_CORPUS_DIR ?= $(abspath ../shared/data/corpus)

.PHONY: install test test-slow demo lint clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,dashboard,teacher,postgres]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

demo: $(STAMP)
	$(BIN)/distilnas run configs/quickstart.yaml $(if $(wildcard runs/quickstart/config.json),--resume)

lint: $(STAMP)
	mkdir -p $(VENV)/typecheck && ln -sfn ../.. $(VENV)/typecheck/distilnas
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy -p distilnas
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
