"""Benchmarks of ssdh_jax against its peers, run from the repository root as `python -m bench.<name>`.

  bench_*.py        one comparison each; `make bench` runs every one with --quick
  harness.py        paired, interleaved rounds on pinned threads; workers, deadlines, headers, Markdown
  train_setup.py    the train-step comparisons' config and synthetic batch
  train_worker.py   one side of a train-step comparison, as a worker process
  train_sides.py    starting, timing and closing those sides, in groups
  train_report.py   MFU, loss share and the train-step tables
  peers/            the PyTorch port (torch_ref) and its numeric check against ssdh_jax (`make bench-peers`)
  gpu_suite.py      the measurements that need an accelerator (bash bench/gpu_suite.sh)
  results/          what the commands printed, each with its command line

quality.py, sweep.py and ceiling.py are retrieval-quality experiments (still run as scripts; see the Makefile).
This module imports nothing: a worker pins its threads before numpy or jax start their pools.
"""
