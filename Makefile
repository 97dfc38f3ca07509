# The two commands: `make demo` runs the main job, `make test` passes the tests.
# Both create .venv when missing and install with the pinned versions in constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Offline data: the GLUE copy beside the repo unless GLUE_DIR is already set.
export GLUE_DIR ?= $(abspath ../shared/data/glue)
export DISTILNAS_CORPUS_DIR ?= $(abspath ../shared/data/corpus)

.PHONY: install install-gpu test test-slow demo lint clean

install: $(STAMP)

# The CUDA build of the pinned torch. PyPI's Linux torch wheels are CUDA builds (CUDA 13 for 2.13), so a
# GPU host's `make install` already has one; this replaces a CPU build (a find-links wheel, as on the dev
# machines: find-links point at an empty folder here) with PyPI's, or with TORCH_INDEX's CUDA version
# (e.g. TORCH_INDEX=https://download.pytorch.org/whl/cu126 make install-gpu).
TORCH_VERSION := $(shell sed -n 's/^torch==//p' constraints.txt)
TORCH_INDEX ?= https://pypi.org/simple
install-gpu: $(STAMP)
	mkdir -p $(VENV)/no-find-links
	PIP_FIND_LINKS=$(abspath $(VENV))/no-find-links $(BIN)/python -m pip install -q -c constraints.txt \
	  --force-reinstall --index-url $(TORCH_INDEX) --extra-index-url https://pypi.org/simple \
	  "torch==$(TORCH_VERSION)"
	$(BIN)/python -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, \
	  'GPUs', torch.cuda.device_count())"

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
