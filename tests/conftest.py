import os
import shutil
import sys
import tempfile

# Tests import `reference` and helpers from this folder.
sys.path.insert(0, os.path.dirname(__file__))

# One persistent XLA compilation cache for this test run, shared by the xdist workers and
# the child processes they start (training subprocesses, notebook kernels), which inherit
# the environment: programs that several tests (or several processes of one test) compile
# are compiled once. A fresh folder per run, removed at the end, so no result depends on
# an earlier run.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="attn_jax_test_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")


def pytest_sessionfinish(session, exitstatus):
  if _OWN_CACHE and "PYTEST_XDIST_WORKER" not in os.environ:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


# Files with the longest tests (multi-device children, notebook kernels, learning runs) go
# first, so that with `-n 2` the short tests fill the end and neither worker idles there.
SLOW_FIRST = ("test_notebooks.py", "test_sequence_parallel.py", "test_sharding.py",
              "test_seq_learning.py", "test_train_parallel.py", "test_ring_attention.py",
              "test_faults.py", "test_train_resume.py", "test_experiment_configs.py")


def pytest_collection_modifyitems(session, config, items):
  rank = {name: i for i, name in enumerate(SLOW_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))
