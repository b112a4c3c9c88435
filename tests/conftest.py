"""Test-session setup: one persistent XLA compilation cache for the whole session.

Most tests build the same small programs (model init, train step, encoders) again in every
`train_and_evaluate` call, and on CPU compiling them costs far more than running them. A cache directory private
to this session (also inherited by the fake-device subprocesses through the environment) compiles each program
once; it is deleted at the end, so no session reuses another's entries. Under pytest-xdist (`make test` runs
two workers) the workers share the controller's directory.
"""

import os
import shutil
import tempfile

# pytest-xdist workers inherit the controller's environment: they share its cache, and only the process that
# made the directory deletes it.
_CACHE = os.environ.get("SSDH_TEST_XLA_CACHE", "")
_OWNER = not _CACHE
if _OWNER:
  _CACHE = tempfile.mkdtemp(prefix="ssdh-jax-test-xla-cache-")
  os.environ["SSDH_TEST_XLA_CACHE"] = _CACHE
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
# Test programs are tiny: XLA's optimisation passes cost more compile time than they save at run time (the
# slowest tests took less time without them, in runs one after the other, not interleaved). Every comparison
# in the suite is between programs compiled the same way, or against a NumPy/PyTorch reference within a
# tolerance. Subprocesses inherit it.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402  (after the environment above, which jax reads at import)

jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_sessionfinish(session, exitstatus):
  if _OWNER:
    shutil.rmtree(_CACHE, ignore_errors=True)
