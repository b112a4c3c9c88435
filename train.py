"""Train SSDH: `python train.py --config configs/X.py --workdir DIR [--config.key=value ...]`."""

from ssdh_jax import cli

if __name__ == "__main__":
  cli.train_main()
