"""ssdh_jax: SSDH (Semi-supervised Deep Hashing, Zhang & Peng, TCSVT 2017) in JAX/Flax.

Nothing here imports TensorFlow at import time; only the tfds data sources do, lazily.
"""

__version__ = "0.1.0"
