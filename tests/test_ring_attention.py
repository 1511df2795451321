"""Ring attention on 8 simulated devices equals single-device reference attention.

Forward and gradients (q, k, v) within 1e-5 for: causal with the zigzag layout, a length
that is not a multiple of the ring and padded sequences whose padding holds NaN; causal
with the contiguous layout; cross-attention of different lengths with an empty sequence;
a 2-D mesh, batch over 'data' and sequence over 'seq'; packed sequences (segment ids),
grouped K/V heads and key sub-blocks smaller than a chunk; and the same through
`F.attention` / `MultiHeadAttention` under `jax.set_mesh` (dispatch picks the ring).
Per-device memory of forward + backward grows linearly with the sequence (compiled
memory analysis, sequence-sharded inputs). The cases run in one child process (this
file as a script) with `XLA_FLAGS=--xla_force_host_platform_device_count=8`.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from child_env import child_env

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# name: (batch, heads, q_len, kv_len, d, causal, zigzag, valid_lens, mesh, batch_axis, grads,
#        extra: kv_heads / segments / block / via ('ring_attention' | 'F.attention'))
CASES = {
    "causal_zigzag_padded_50": (2, 2, 50, 50, 8, True, True, [50, 23], "seq=8", None, True, {}),
    "causal_contiguous_64": (2, 2, 64, 64, 8, True, False, None, "seq=8", None, True, {}),
    "cross_40_70_empty_row": (2, 2, 40, 70, 8, False, None, [70, 0], "seq=8", None, True, {}),
    "mesh_data2_seq4": (4, 2, 36, 36, 8, True, True, [36, 30, 5, 36], "data=2,seq=4", "data",
                        True, {}),
    "segments_gqa_block3": (2, 4, 45, 45, 8, True, True, [45, 40], "seq=4", None, True,
                            {"kv_heads": 2, "segments": True, "block": 3}),
    "F_attention_dispatch": (4, 4, 40, 40, 8, True, None, None, "data=2,seq=4", None, True,
                             {"kv_heads": 2, "segments": True, "via": "F.attention"}),
    "F_attention_padded_tp": (2, 4, 33, 33, 8, False, None, [33, 20], "seq=4,model=2", None,
                              True, {"via": "F.attention"}),
}


def run_case(b, h, lq, lk, d, causal, zigzag, lens, mesh_spec, batch_axis, with_grads, extra,
             seed=0):
  """-> max |ring - reference| of the output and (with_grads) of the gradients of
  sum(out * ct) with respect to q, k and v."""
  import jax
  import jax.numpy as jnp
  from attn_jax import functional as F
  from attn_jax.functional.ring import ring_attention
  from attn_jax.train.sharding import make_mesh
  mesh = make_mesh(mesh_spec)
  rng = np.random.default_rng(seed)
  hk = extra.get("kv_heads", h)
  q = jnp.asarray(rng.normal(size=(b, h, lq, d)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(b, hk, lk, d)), jnp.float32) for _ in range(2))
  seg = None
  if extra.get("segments"):
    seg = jnp.asarray(np.sort(rng.integers(0, 3, size=(b, lq)), axis=1), jnp.int32)
  ct = jnp.asarray(rng.normal(size=(b, h, lq, d)), jnp.float32)
  valid = None if lens is None else jnp.asarray(lens, jnp.int32)
  if valid is not None:   # padding holds NaN: it must not reach the output
    pad = jnp.arange(lk)[None, None, :, None] >= valid[:, None, None, None]
    v = jnp.where(pad, jnp.nan, v)
  ring = lambda q, k, v: ring_attention(q, k, v, mesh, valid_lens=valid, is_causal=causal,
                                        zigzag=zigzag, batch_axis=batch_axis, q_segment_ids=seg,
                                        block=extra.get("block", 512))
  if extra.get("via") == "F.attention":
    ring = lambda q, k, v: F.attention(q, k, v, valid_lens=valid, is_causal=causal,
                                       q_segment_ids=seg)
  ref = lambda q, k, v: F.attention(q, k, v, valid_lens=valid, is_causal=causal,
                                    q_segment_ids=seg, implementation="reference")
  loss = lambda f: (lambda *a: (f(*a) * ct).sum())
  grad = (lambda f, *a: jax.grad(loss(f), argnums=(0, 1, 2))(*a)) if with_grads else (
      lambda f, *a: (jnp.zeros(()),) * 3)
  both = lambda f: jax.jit(lambda *a: (f(*a), grad(f, *a)))
  with jax.set_mesh(mesh):
    (out, grads) = both(ring)(q, k, v)
    traced = "shard_map" in str(jax.make_jaxpr(ring)(q, k, v))
  out_ref, grads_ref = both(ref)(q, k, v)
  devices = len(out.sharding.device_set)
  out, out_ref = np.asarray(out), np.asarray(out_ref)
  grads, grads_ref = [np.asarray(g) for g in grads], [np.asarray(g) for g in grads_ref]
  diff = lambda a, b: float(np.abs(np.nan_to_num(a) - np.nan_to_num(b)).max())
  return {"out": diff(out, out_ref) if np.isfinite(out).all() else 1e9,
          "dq": diff(grads[0], grads_ref[0]), "dk": diff(grads[1], grads_ref[1]),
          "dv": diff(grads[2], grads_ref[2]), "shape": list(out.shape),
          "devices": devices, "ring": traced,
          "finite_grads": bool(all(np.isfinite(g).all() for g in grads))}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  out = tmp_path_factory.mktemp("ring") / "ring.json"
  env = child_env(8, "--xla_cpu_collective_call_terminate_timeout_seconds=900")
  p = subprocess.run([sys.executable, __file__, str(out)], env=env, cwd=ROOT,
                     capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
  return json.loads(out.read_text())


@pytest.mark.parametrize("name", list(CASES))
def test_ring_attention_matches_reference(results, name):
  got = results[name]
  b, h, lq = CASES[name][:3]
  assert got["devices"] == 8 and got["shape"] == [b, h, lq, 8]
  assert got["finite_grads"] and got["ring"]
  for key in ("out", "dq", "dk", "dv"):
    assert got[key] < 1e-5, (key, got)


def test_ring_attention_checks_its_inputs():
  import jax.numpy as jnp
  from attn_jax.functional import ShapeError
  from attn_jax.functional.ring import ring_attention
  from attn_jax.train.sharding import make_mesh
  mesh = make_mesh(None)
  q = jnp.zeros((1, 2, 4, 8))
  with pytest.raises(ShapeError, match="k"):
    ring_attention(q, jnp.zeros((1, 2, 4, 4)), q, mesh, "data")
  with pytest.raises(ValueError, match="no axis 'seq'"):
    ring_attention(q, q, q, mesh)
  np.testing.assert_allclose(ring_attention(q + 1, q, q + 2, mesh, "data"), q + 2, atol=1e-6)
  from attn_jax import functional as F
  with pytest.raises(ValueError, match="needs a mesh with a 'seq' axis"):
    F.attention(q, q, q, implementation="ring")
  with pytest.raises(ValueError, match="does not support: mask, window"):
    F.attention(q, q, q, mask=jnp.ones((4, 4), bool), window=2, implementation="ring")


def memory_case(lengths=(4096, 8192, 16384)):
  """Per-device temporary bytes of jit(grad(ring attention)) on 8 devices, causal, inputs
  [1, 4, N, 64] sharded along the sequence; and what one device's [N, N] scores would take."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P
  from attn_jax.functional.ring import ring_attention
  from attn_jax.train.sharding import make_mesh
  mesh = make_mesh("seq=8")
  s = NamedSharding(mesh, P(None, None, "seq", None))
  temp = {}
  for n in lengths:
    x = jax.ShapeDtypeStruct((1, 4, n, 64), jnp.float32, sharding=s)
    grad = jax.grad(lambda q, k, v: ring_attention(q, k, v, mesh, is_causal=True).sum(),
                    argnums=(0, 1, 2))
    mem = jax.jit(grad, out_shardings=(s, s, s)).lower(x, x, x).compile().memory_analysis()
    temp[n] = int(mem.temp_size_in_bytes)
  return {"temp": temp, "dense_scores": {n: 4 * n * n * 4 for n in lengths}}


def test_ring_attention_memory_is_linear_per_device(results):
  temp = {int(n): t for n, t in results["memory"]["temp"].items()}
  dense = {int(n): t for n, t in results["memory"]["dense_scores"].items()}
  ns = sorted(temp)
  for a, b in zip(ns, ns[1:]):   # doubling N at most doubles the memory (+10%): O(N / 8)
    assert temp[b] / temp[a] < 2.2, temp
  assert temp[ns[-1]] < dense[ns[-1]] / 8, (temp, dense)


if __name__ == "__main__":
  sys.path.insert(0, HERE)
  got = {name: run_case(*case) for name, case in CASES.items()}
  got["memory"] = memory_case()
  with open(sys.argv[1], "w") as f:
    json.dump(got, f)
