"""The NaN/Inf check before a save: on the CPU backend numpy reads the shards in place, and
it must agree with the compiled check (`_all_finite`, the accelerator and multi-host path)
on fresh random trees, sharded over 8 simulated devices or not."""
import subprocess
import sys

import numpy as np
import pytest

from child_env import ROOT, child_env

CHILD = r"""
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from attn_jax.train import checkpoint as ck
from attn_jax.train.errors import CheckpointError
mesh = jax.make_mesh((4, 2), ("data", "model"))
rng = np.random.default_rng(int(__import__("sys").argv[1]))
specs = [P(), P("data"), P("data", "model"), P(None, "model"), P("model")]
for trial in range(20):
  leaves, want = [], []
  for spec in specs:
    x = rng.normal(size=(8, 6)).astype(np.float32)
    bad = rng.random() < 0.4
    if bad:   # one poisoned element anywhere: in a single shard, or a replicated copy
      x[rng.integers(8), rng.integers(6)] = rng.choice([np.nan, np.inf, -np.inf])
    leaves.append(jax.device_put(jnp.asarray(x), NamedSharding(mesh, spec)))
    want.append(not bad)
  got = ck._device_flags(leaves)
  compiled = np.asarray(ck._all_finite(leaves)).tolist()
  assert got == want == compiled, (trial, got, want, compiled)
  tree = {f"leaf{i}": x for i, x in enumerate(leaves)}
  if all(want):
    ck._check_finite(tree)
  else:
    try:
      ck._check_finite(tree)
      raise AssertionError("no error")
    except CheckpointError as e:
      assert f"leaf{want.index(False)}" in str(e), e
print("ok")
"""


@pytest.mark.parametrize("seed", [0, 1])
def test_host_check_agrees_with_the_compiled_one_on_sharded_trees(seed):
  p = subprocess.run([sys.executable, "-c", CHILD, str(seed)], cwd=ROOT, env=child_env(8),
                     capture_output=True, text=True, timeout=300)
  assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stdout + p.stderr


def test_host_arrays_and_unsharded_device_arrays():
  import jax.numpy as jnp
  from attn_jax.train import checkpoint as ck
  from attn_jax.train.errors import CheckpointError
  rng = np.random.default_rng(2)
  x = rng.normal(size=(5, 3)).astype(np.float32)
  ck._check_finite({"a": jnp.asarray(x), "b": x, "n": np.arange(3)})   # ints are skipped
  y = x.copy()
  y[4, 2] = np.nan
  for tree, name in (({"a": jnp.asarray(x), "b": jnp.asarray(y)}, "'b'"),
                     ({"a": y, "b": jnp.asarray(x)}, "'a'")):
    with pytest.raises(CheckpointError, match=name):
      ck._check_finite(tree)
