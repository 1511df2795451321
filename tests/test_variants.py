"""Attention variants (GQA/MQA, sliding windows, segment ids, soft-capping, ALiBi, sigmoid and
linear attention) against float64 NumPy references, on fresh random inputs each run."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax import functional as F
from attn_jax.functional import _tile_masks as T
from attn_jax.functional import backends, blockwise
from reference import attention_ref, rel_err, softmax_ref

B, NQ, NK, D, DV = 2, 75, 100, 16, 8  # lengths not multiples of the 32-wide tiles


def _fresh():
  seed = np.random.SeedSequence().entropy % 2**31
  return seed, np.random.default_rng(seed)


def _qkv(rng, hq, hkv, nq=NQ, nk=NK, q_scale=1.0, dv=DV):
  q = rng.normal(size=(B, hq, nq, D)) * q_scale
  k, v = rng.normal(size=(B, hkv, nk, D)), rng.normal(size=(B, hkv, nk, dv))
  return [jnp.asarray(x, jnp.float32) for x in (q, k, v)]


def _band(nq, nk, left, right):
  rel = np.arange(nq)[:, None] + (nk - nq) - np.arange(nk)[None, :]
  keep = np.ones((nq, nk), bool)
  if left is not None:
    keep &= rel <= left
  if right is not None:
    keep &= rel >= -right
  return keep


def _packed_ids(rng, n, p=0.08):
  return np.cumsum(rng.random((B, n)) < p, axis=1)  # nondecreasing: packed sequences


def _ref(q, k, v, g, keep, bias, scale, softcap):
  """float64 output and gradients of <out, g> in q, k, v (K/V repeated per group, the
  repeats' gradients summed back) and d(scores) (= d bias)."""
  q, k, v, g = (np.asarray(x, np.float64) for x in (q, k, v, g))
  groups = q.shape[1] // k.shape[1]
  kr, vr = np.repeat(k, groups, axis=1), np.repeat(v, groups, axis=1)
  raw = np.einsum("...qd,...kd->...qk", q, kr) * scale
  th = np.tanh(raw / softcap) if softcap else None
  s = softcap * th if softcap else raw
  s = s if bias is None else s + bias
  p = softmax_ref(s, keep)
  out = np.einsum("...qk,...kd->...qd", p, vr)
  dv = np.einsum("...qk,...qd->...kd", p, g)
  dp = np.einsum("...qd,...kd->...qk", g, vr)
  ds = p * (dp - np.sum(dp * p, axis=-1, keepdims=True))
  dr = ds * (1 - th ** 2) if softcap else ds
  dq = np.einsum("...qk,...kd->...qd", dr, kr) * scale
  dk = np.einsum("...qk,...qd->...kd", dr, q) * scale
  fold = lambda x: x.reshape(x.shape[0], -1, groups, *x.shape[2:]).sum(2)
  return out, (dq, fold(dk), fold(dv)), ds, p


def _grad_err(x, ref) -> float:
  """Relative error, against a norm of at least 1: a gradient can cancel exactly in float64
  (softmax over a single valid key has zero score gradient, so dq = 0 when every valid row
  has one key: seed 1308016173 of 'everything'), where float32 leaves ~1e-8 of rounding and
  a pure ratio explodes."""
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1.0))


# 75 x 100 over 32 x 32 tiles; segments_self_causal: 100 x 100 in one tile (the loop-free path)
CASES = ["gqa_mask_causal", "mqa_lens_window_causal", "segments_self_causal",
         "softcap_alibi_gqa_causal", "everything"]


@pytest.mark.parametrize("case", CASES)
def test_variants_vs_float64(case):
  """Blockwise forward and gradients, the reference path's output and weights, and (without
  softcap) the jax.nn path, all against float64, relative error < 1e-5."""
  seed, rng = _fresh()
  hq, hkv = {"mqa_lens_window_causal": (4, 1), "segments_self_causal": (2, 2)}.get(case, (4, 2))
  nq, nk = (NK, NK) if case.startswith("segments_self") else (NQ, NK)
  soft = case.startswith("softcap") or case.startswith("everything")
  q, k, v = _qkv(rng, hq, hkv, nq, nk, q_scale=3.0 if soft else 1.0)
  kw, keep = {}, np.ones((B, 1, nq, nk), bool)
  if "causal" in case:
    kw["is_causal"] = True
    keep = keep & _band(nq, nk, None, 0)
  if "mask" in case:
    m = rng.random((B, 1, nq, nk)) < 0.7
    kw["mask"], keep = jnp.asarray(m), keep & m
  if case.startswith("mqa") or case.startswith("segments") or case.startswith("everything"):
    lens = np.array([0, nk - 9]) if case.startswith("mqa") else rng.integers(0, nk + 1, (B,))
    kw["valid_lens"] = jnp.asarray(lens)
    keep = keep & (np.arange(nk) < lens[:, None, None, None])
  window = {"mqa_lens_window_causal": (13, None), "everything": (20, 5)}.get(case)
  if window:
    kw["window"] = window
    keep = keep & _band(nq, nk, *window)
  if case.startswith("segments") or case.startswith("everything"):
    qs = _packed_ids(rng, nq)
    ks = qs if case.startswith("segments_self") else _packed_ids(rng, nk)
    kw["q_segment_ids"] = jnp.asarray(qs)
    if ks is not qs:  # cross: kv ids of their own (self-attention: kv ids default to q's)
      kw["kv_segment_ids"] = jnp.asarray(ks)
    keep = keep & (qs[:, None, :, None] == ks[:, None, None, :])
  if soft:
    kw["softcap"] = 2.0
  user_bias = np.float32(rng.normal(size=(nk,))) if soft else None  # a key bias
  bias = user_bias
  if "alibi" in case or case.startswith("everything"):
    kw["alibi_slopes"] = slopes = F.alibi_slopes(hq)
    dist = np.abs(np.arange(nq)[:, None] + nk - nq - np.arange(nk)[None, :])
    bias = -np.float64(slopes)[:, None, None] * dist + (0.0 if bias is None else bias)
  g = jnp.asarray(rng.normal(size=(B, hq, nq, DV)), jnp.float32)
  tiles = (None, None) if case.startswith("segments_self") else (32, 32)
  user_bias = None if user_bias is None else jnp.asarray(user_bias)

  @jax.jit
  def loss(q, k, v, b):
    out = F.blockwise_attention(q, k, v, bias=b, block_q=tiles[0], block_k=tiles[1], **kw)
    return jnp.vdot(out, g), out

  (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(
      q, k, v, user_bias)
  ref, ref_grads, ds, ref_w = _ref(q, k, v, g, keep, bias, 1 / np.sqrt(D), kw.get("softcap"))
  assert rel_err(out, ref) < 1e-5, (case, seed)
  for name, gr, r in zip("qkv", grads, ref_grads):
    assert _grad_err(gr, r) < 1e-5, (case, name, seed)
  if user_bias is not None:  # summed over every axis but kv
    assert _grad_err(grads[3], ds.sum(axis=(0, 1, 2))) < 1e-5, (case, seed)
  empty = ~np.broadcast_to(keep, ref_w.shape).any(-1)
  assert np.all(np.asarray(out)[empty] == 0)  # rows with no valid key: exactly 0
  out_ref, w = jax.jit(lambda q, k, v: F.attention(
      q, k, v, bias=user_bias, return_weights=True, implementation="reference", **kw))(q, k, v)
  assert rel_err(out_ref, ref) < 1e-5 and rel_err(w, ref_w) < 1e-5, (case, seed)
  if "softcap" not in kw:  # jax.nn needs d_v == d_k: values = keys, against the reference path
    run = jax.jit(lambda q, k, impl: F.attention(q, k, k, bias=user_bias, implementation=impl,
                                                 **kw), static_argnums=2)
    assert rel_err(run(q, k, "xla"), run(q, k, "reference")) < 1e-5, (case, seed)


def test_gqa_equals_mha_with_repeated_heads_and_does_not_repeat():
  seed, rng = _fresh()
  q, k, v = _qkv(rng, 8, 2, 40, 50, dv=D)  # d_v == d_k for jax.nn
  rep = lambda x: jnp.repeat(x, 4, axis=1)
  lens = jnp.asarray(rng.integers(1, 51, (B,)))
  f = jax.jit(lambda q, k, v, impl: F.attention(q, k, v, valid_lens=lens, is_causal=True,
                                                implementation=impl), static_argnums=3)
  mha = f(q, rep(k), rep(v), "reference")
  for impl in ("reference", "blockwise", "xla"):
    assert rel_err(f(q, k, v, impl), mha) < 1e-5, (impl, seed)
  # kv_heads == heads is plain MHA
  q8, k8, v8 = _qkv(rng, 4, 4, 20, 30)
  ref, _ = attention_ref(q8, k8, v8)
  assert rel_err(jax.jit(F.blockwise_attention)(q8, k8, v8), ref) < 1e-5
  # the kernel gets K/V with 2 heads per batch row: nothing repeated
  jaxpr = jax.make_jaxpr(lambda q, k, v: F.blockwise_attention(q, k, v))(q, k, v)
  (eqn,) = [e for e in jaxpr.eqns if e.params.get("name") == "_blockwise_kernel"]
  assert eqn.invars[0].aval.shape[:2] == (B * 2, 4) and eqn.invars[1].aval.shape[0] == B * 2


def test_window_wider_than_the_sequence_is_full_attention():
  _, rng = _fresh()
  q, k, v = _qkv(rng, 2, 2)
  f = lambda impl, **kw: jax.jit(lambda q, k, v: F.attention(q, k, v, implementation=impl,
                                                             **kw))(q, k, v)
  full, causal = f("reference"), f("reference", is_causal=True)
  for impl in ("reference", "blockwise"):
    assert rel_err(f(impl, window=NK), full) < 1e-6
    assert rel_err(f(impl, window=(NK, 3), is_causal=True), causal) < 1e-6


@pytest.mark.parametrize("nq,nk,bq,bk,window,causal", [
    (100, 100, 16, 16, (20, 0), False), (100, 100, 32, 16, (5, 40), False),
    (70, 130, 16, 32, (33, None), True), (130, 70, 32, 16, (None, 7), False),
    (64, 64, 64, 16, (10, 10), False), (96, 96, 16, 32, (0, 0), False)])
def test_window_loops_visit_exactly_the_band(nq, nk, bq, bk, window, causal):
  """A tile is visited iff it has an unmasked entry, and masked iff it has a masked one."""
  cfg = blockwise._Cfg(bq, bk, bq, bk, nq, nk, causal, 1.0, (), 1, window)
  n_qb, n_kb = -(-nq // bq), -(-nk // bk)
  left, right = window
  right = 0 if causal else right
  rel = np.arange(n_qb * bq)[:, None] + nk - nq - np.arange(n_kb * bk)[None, :]
  keep = (rel <= (np.inf if left is None else left)) & \
      (rel >= -(np.inf if right is None else right))
  tile = lambda i, j: keep[i * bq:(i + 1) * bq, j * bk:(j + 1) * bk]
  for i in range(n_qb):
    lo, a, b, hi = (int(x) for x in T.k_tiles(cfg, i * bq, n_kb))
    assert [j for j in range(n_kb) if tile(i, j).any()] == list(range(lo, hi))
    assert [j for j in range(lo, hi) if tile(i, j).all()] == list(range(a, b))
  for j in range(n_kb):
    lo, a, b, hi = (int(x) for x in T.q_tiles(cfg, j * bk, n_qb))
    assert [i for i in range(n_qb) if tile(i, j).any()] == list(range(lo, hi))
    assert [i for i in range(lo, hi) if tile(i, j).all()] == list(range(a, b))


def test_window_cost_is_linear_in_length():
  visited = []
  for n in (1024, 2048, 4096):
    cfg = blockwise._Cfg(128, 128, 128, 128, n, n, True, 1.0, (), 1, (256, 0))
    rng_ = [T.k_tiles(cfg, i * 128, n // 128) for i in range(n // 128)]
    visited.append(sum(int(hi) - int(lo) for lo, _, _, hi in rng_))
  for n, count in zip((1024, 2048, 4096), visited):  # (128 + 256) / 128 key tiles per query tile
    assert 2 * n // 128 < count <= 3 * n // 128
  assert visited[2] - visited[1] == 2 * (visited[1] - visited[0])  # a constant slope


def test_packed_segments_equal_separate_sequences():
  """Two causal sequences and padding packed into one row equal the sequences run alone."""
  _, rng = _fresh()
  a, b, pad = 30, 45, 5
  q, k, v = _qkv(rng, 2, 2, a + b + pad, a + b + pad)
  ids = jnp.asarray([[0] * a + [1] * b + [2] * pad] * B)
  lens = jnp.full((B,), a + b)
  alone = [F.attention(q[:, :, lo:hi], k[:, :, lo:hi], v[:, :, lo:hi], is_causal=True)
           for lo, hi in ((0, a), (a, a + b))]
  for impl in ("reference", "blockwise"):
    packed = jax.jit(lambda q, k, v: F.attention(q, k, v, q_segment_ids=ids, valid_lens=lens,
                                                 is_causal=True, implementation=impl))(q, k, v)
    assert rel_err(packed[:, :, :a], alone[0]) < 1e-5, impl
    assert rel_err(packed[:, :, a:a + b], alone[1]) < 1e-5, impl


def test_alibi_slopes_and_bias():
  np.testing.assert_allclose(F.alibi_slopes(8), 2.0 ** -np.arange(1, 9), rtol=1e-6)
  pow2 = lambda n: [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]
  np.testing.assert_allclose(F.alibi_slopes(12), pow2(8) + pow2(16)[0::2][:4], rtol=1e-6)
  np.testing.assert_allclose(F.alibi_slopes(6), pow2(4) + pow2(8)[0::2][:2], rtol=1e-6)
  s = np.asarray(F.alibi_slopes(20))
  assert len(set(s)) == 20 and np.all((s > 0) & (s < 1))
  # under a causal mask the symmetric form is the paper's slope * (j - i)
  _, rng = _fresh()
  q, k, v = _qkv(rng, 4, 4, 30, 30)
  slopes = F.alibi_slopes(4)
  j_minus_i = np.arange(30)[None, :] - np.arange(30)[:, None]
  causal_form = np.float32(slopes)[:, None, None] * j_minus_i
  ref = F.attention(q, k, v, bias=jnp.asarray(causal_form), is_causal=True)
  assert rel_err(F.attention(q, k, v, alibi_slopes=slopes, is_causal=True,
                             implementation="blockwise"), ref) < 1e-5


@pytest.mark.parametrize("case", ["mask_default_bias", "lens_causal_window", "gqa_array_bias"])
def test_sigmoid_attention_vs_float64(case):
  seed, rng = _fresh()
  q, k, v = _qkv(rng, 4, 2 if case.startswith("gqa") else 4)
  keep, kw, b = np.ones((B, 1, NQ, NK), bool), {}, -np.log(NK)
  if case == "mask_default_bias":
    m = rng.random((B, 1, NQ, NK)) < 0.6
    kw["mask"], keep = jnp.asarray(m), m
  elif case == "lens_causal_window":
    lens = rng.integers(0, NK + 1, (B,))
    kw.update(valid_lens=jnp.asarray(lens), is_causal=True, window=(10, None))
    keep = (np.arange(NK) < lens[:, None, None, None]) & _band(NQ, NK, 10, 0)
  else:
    b = rng.normal(size=(4, NQ, NK))
    kw["bias"] = jnp.asarray(b, jnp.float32)
  out, w = F.sigmoid_attention(q, k, v, return_weights=True, **kw)
  groups = q.shape[1] // k.shape[1]
  qn, kn, vn = (np.float64(x) for x in (q, k, v))
  s = np.einsum("...qd,...kd->...qk", qn, np.repeat(kn, groups, 1)) / np.sqrt(D)
  ref_w = np.where(keep, 1 / (1 + np.exp(-(s + b))), 0.0)
  assert rel_err(w, ref_w) < 1e-5, (case, seed)
  assert rel_err(out, ref_w @ np.repeat(vn, groups, 1)) < 1e-5, (case, seed)


@functools.lru_cache(maxsize=None)
def _features(seed: int = 7):
  """512 Performer features for d = 16 (orthogonal blocks of 16 rows, so the first m rows are
  the features of m), one compile for every seed."""
  return F.performer_features(jax.random.key(seed), 512, D)


def _phi_ref(x, kind, w, scale):
  if kind == "elu1":
    return np.where(x > 0, x + 1, np.exp(x))
  x = x * np.sqrt(scale)  # no stabiliser: in float64 it cancels, so the test checks that
  return np.exp(x @ w.T - 0.5 * np.sum(x * x, -1, keepdims=True)) / np.sqrt(w.shape[0])


@pytest.mark.parametrize("kind", ["elu1", "performer"])
@pytest.mark.parametrize("causal", [False, True])
def test_linear_attention_vs_float64(kind, causal):
  seed, rng = _fresh()
  n = 75
  q, k, v = _qkv(rng, 4, 2, n, n, q_scale=0.5)
  lens = rng.integers(1, n + 1, (B,))
  w = _features()[:32]
  out = jax.jit(lambda q, k, v: F.linear_attention(
      q, k, v, feature_map=kind, projection=w if kind == "performer" else None, causal=causal,
      valid_lens=jnp.asarray(lens), chunk_size=16))(q, k, v)
  fq = _phi_ref(np.float64(q), kind, np.float64(w), 1 / np.sqrt(D))
  fk = _phi_ref(np.repeat(np.float64(k), 2, 1), kind, np.float64(w), 1 / np.sqrt(D))
  a = np.einsum("...qf,...kf->...qk", fq, fk) * (np.arange(n) < lens[:, None, None, None])
  if causal:
    a = a * np.tril(np.ones((n, n)))
  ref = a @ np.repeat(np.float64(v), 2, 1) / a.sum(-1, keepdims=True)
  assert rel_err(out, ref) < 1e-5, (kind, causal, seed)


def test_performer_error_falls_with_the_number_of_features():
  """FAVOR+ estimates softmax attention; with fixed keys its error shrinks as m grows (the mean
  over 4 draws of the projection: one draw alone can stall between two sizes)."""
  ks = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(kk, (2, 4, 64, 16)) * s for kk, s in zip(ks, (0.6, 0.6, 1.0)))
  exact = jax.jit(lambda q, k, v: F.attention(q, k, v, implementation="reference"))(q, k, v)
  ws = [_features(s) for s in range(4)]
  approx = jax.jit(lambda w: F.linear_attention(q, k, v, feature_map="performer", projection=w))
  # the first m rows of 512 features are the features of m (orthogonal blocks of 16 rows)
  errs = [np.mean([rel_err(approx(w[:m]), exact) for w in ws]) for m in (8, 64, 512)]
  assert all(a > b for a, b in zip(errs, errs[1:])), errs  # about 1 / sqrt(m)
  assert errs[-1] < errs[0] / 2 and errs[-1] < 0.5, errs


def test_select_implementation_for_variants():
  sds = lambda n, h=4, dt=jnp.bfloat16: jax.ShapeDtypeStruct((2, h, n, 64), dt)
  sel = backends.select_implementation
  q, kv = sds(64, 8), sds(64, 2)
  assert sel(q, kv, kv, backend="gpu") == "cudnn"  # GQA
  assert sel(q, kv, kv, window=(16, 0), backend="gpu") == "cudnn"
  assert sel(q, kv, kv, window=16, is_causal=True, backend="gpu") == "cudnn"
  assert sel(q, kv, kv, window=(16, 4), backend="gpu") == "xla"  # cuDNN: causal windows only
  assert sel(q, sds(66, 2), sds(66, 2), window=(16, 0), backend="gpu") == "xla"  # not square
  big = int(np.sqrt(backends.CPU_BLOCKWISE_MIN_SCORES))
  for kw in (dict(softcap=30.0), dict(alibi=True), dict(segment_ids=True)):
    for backend in ("gpu", "tpu", "cpu"):
      assert sel(sds(big), sds(big), sds(big), backend=backend, **kw) == "blockwise"
      assert sel(sds(64), sds(64), sds(64), backend=backend, **kw) == "reference"
  assert sel(sds(big), sds(big), sds(big), window=(8, 0), backend="cpu") == "blockwise"
  # F.attention on CPU: the variants reach the kernel at long lengths
  x = jax.ShapeDtypeStruct((1, 2, big, 16), jnp.float32)
  trace = lambda **kw: str(jax.make_jaxpr(lambda q: F.attention(q, q, q, **kw))(x))
  assert "_blockwise_kernel" in trace(softcap=5.0, window=(32, 0))
  assert "_blockwise_kernel" in trace(q_segment_ids=jnp.zeros((1, big), jnp.int32))


def test_variant_errors_name_the_argument():
  _, rng = _fresh()
  q, k, v = _qkv(rng, 4, 2)
  with pytest.raises(F.ShapeError, match="'k'.*kv_heads dividing the 6 query heads"):
    F.attention(jnp.ones((B, 6, NQ, D)), jnp.ones((B, 4, NK, D)), jnp.ones((B, 4, NK, D)))
  with pytest.raises(ValueError, match="'window'"):
    F.attention(q, k, v, window=(3, -1))
  with pytest.raises(F.ShapeError, match="'q_segment_ids' has shape \\(2, 74\\)"):
    F.blockwise_attention(q, k, v, q_segment_ids=jnp.zeros((B, NQ - 1), jnp.int32),
                          kv_segment_ids=jnp.zeros((B, NK), jnp.int32))
  with pytest.raises(F.ShapeError, match="'kv_segment_ids' has dtype float32.*segment ids"):
    F.attention(q, k, v, q_segment_ids=jnp.zeros((NQ,), jnp.int32),
                kv_segment_ids=jnp.zeros((NK,)))
  with pytest.raises(ValueError, match="kv_segment_ids"):
    F.attention(q, k, v, q_segment_ids=jnp.zeros((NQ,), jnp.int32))  # q_len != kv_len
  with pytest.raises(F.ShapeError, match="'softcap' must be a Python number > 0"):
    F.blockwise_attention(q, k, v, softcap=-1.0)
  with pytest.raises(F.ShapeError, match="'alibi_slopes'"):
    F.attention(q, k, v, alibi_slopes=jnp.ones((3,)))
  with pytest.raises(ValueError, match="no 'softcap'"):
    F.attention(q, k, v, softcap=5.0, implementation="xla")
  with pytest.raises(ValueError, match="PRNG key"):
    F.linear_attention(q, k, v, feature_map="performer")
  with pytest.raises(F.ShapeError, match="'k'.*causal=True"):
    F.linear_attention(q, k, v, causal=True)


def test_variants_benchmark_smoke(tmp_path, capsys):
  from experiments import bench_attention
  out = tmp_path / "variants.json"
  rows = bench_attention.main(["--variants", "--variant-sizes", "128", "--window", "32",
                               "--gqa-n", "128", "--modes", "fwd", "--repeats", "1",
                               "--rounds", "1", "--min-seconds", "0", "--out", str(out)])
  text = capsys.readouterr().out
  assert [r["kind"] for r in rows] == ["window", "gqa", "gqa"]
  assert "| 32 | 128 | fwd |" in text and "| 8 / 2 | 128 | fwd |" in text
  kv = [r["kv_bytes"] for r in rows if r["kind"] == "gqa"]
  assert kv[0] == 4 * kv[1]  # 8 vs 2 K/V heads
  assert len(json.loads(out.read_text())["variants"]) == 3
