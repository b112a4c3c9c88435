"""Evaluate a run: `python eval.py --workdir DIR [--checkpoint best|latest|STEP]`."""

from ssdh_jax import cli

if __name__ == "__main__":
  cli.eval_main()
