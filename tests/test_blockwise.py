"""Blockwise (flash) attention and the backend dispatch: float64 references, small sizes only."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax import functional as F
from attn_jax.functional import backends, blockwise
from attn_jax.functional import tiles as tiling
from reference import attention_ref, rel_err

LEAD, NQ, NK, D, DV = (2, 2), 75, 100, 16, 8  # lengths not multiples of the 32-wide tiles


def _qkv(seed, lead=LEAD, nq=NQ, nk=NK, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  q, k, v = (rng.normal(size=lead + s) for s in ((nq, D), (nk, D), (nk, DV)))
  return [jnp.asarray(x, dtype) for x in (q, k, v)]


def _grads_ref(q, k, v, g, keep, bias, scale):
  """float64 gradients of <attention(q, k, v, bias), g> (and d bias) by hand."""
  q, k, v, g = (np.asarray(x, np.float64) for x in (q, k, v, g))
  out, p = attention_ref(q, k, v, keep=keep, bias=bias, scale=scale)
  dv = np.einsum("...qk,...qd->...kd", p, g)
  dp = np.einsum("...qd,...kd->...qk", g, v)
  ds = p * (dp - np.sum(dp * p, axis=-1, keepdims=True))
  dq = np.einsum("...qk,...kd->...qd", ds, k) * scale
  dk = np.einsum("...qk,...qd->...kd", ds, q) * scale
  return out, (dq, dk, dv), ds


CASES = ["none", "mask", "valid_lens", "per_query_lens", "bias", "causal", "causal_long_q",
         "causal_lens_bias"]


@pytest.mark.parametrize("tiles", [(32, 32), (None, None)], ids=["tiled", "one_tile"])
@pytest.mark.parametrize("case", CASES)
def test_forward_and_gradients_vs_float64(case, tiles):
  seed = np.random.SeedSequence().entropy % 2**31  # fresh inputs every run
  rng = np.random.default_rng(seed)
  nq, nk = (NK, NQ) if case == "causal_long_q" else (NQ, NK)
  q, k, v = _qkv(seed, nq=nq, nk=nk)
  kw, keep, bias = {}, np.ones((nq, nk), bool), None
  if case == "mask":
    m = rng.random((2, 1, nq, nk)) < 0.6
    kw["mask"], keep = jnp.asarray(m), m
  if case in ("valid_lens", "per_query_lens", "causal_lens_bias"):
    lens = np.array([0, 37]) if case == "valid_lens" else rng.integers(0, nk + 1, (2, nq))
    kw["valid_lens"] = jnp.asarray(lens)
    keep = keep & (np.arange(nk) < (lens[:, None, None, None] if lens.ndim == 1
                                    else lens[:, None, :, None]))
  if case in ("bias", "causal_lens_bias"):
    bias = rng.normal(size=(2, 1, nq, nk)) if case == "bias" else rng.normal(size=(nk,))
    bias = np.float32(bias)
  if case.startswith("causal"):
    kw["is_causal"] = True
    keep = keep & np.tril(np.ones((nq, nk), bool), k=nk - nq)
  g = jnp.asarray(rng.normal(size=LEAD + (nq, DV)), jnp.float32)
  scale = 1 / np.sqrt(D)

  @jax.jit
  def loss(q, k, v, b):
    out = F.blockwise_attention(q, k, v, bias=b, block_q=tiles[0], block_k=tiles[1], **kw)
    return jnp.vdot(out, g), out

  (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(
      q, k, v, None if bias is None else jnp.asarray(bias))
  ref, ref_grads, ds = _grads_ref(q, k, v, g, keep, bias, scale)
  assert rel_err(out, ref) < 1e-5, (case, seed)
  for name, gr, r in zip("qkv", grads, ref_grads):
    assert rel_err(gr, r) < 1e-5, (case, name, seed)
  if bias is not None:  # reduced over the axes the bias was broadcast along
    dbias = ds.sum(axis=tuple(range(ds.ndim - bias.ndim)))
    dbias = dbias.sum(axis=tuple(i for i, d in enumerate(bias.shape) if d == 1), keepdims=True)
    assert grads[3].shape == bias.shape
    assert rel_err(grads[3], dbias.reshape(bias.shape)) < 1e-5, (case, seed)
  if case in ("valid_lens", "causal_long_q"):  # rows with no valid key: exactly 0
    empty = ~np.broadcast_to(keep, LEAD + (nq, nk)).any(-1)
    assert empty.any() and np.all(np.asarray(out)[empty] == 0)


@pytest.mark.parametrize("group", [1, 3])
@pytest.mark.parametrize("case", ["none", "valid_lens", "per_query_lens", "causal"])
def test_forward_in_row_groups(case, group):
  """Without gradients the forward may run the Z rows as independent groups (uneven: 4 rows
  in 3 + 1); gradients (all rows at once) are unaffected by group_size."""
  seed = np.random.SeedSequence().entropy % 2**31
  rng = np.random.default_rng(seed)
  q, k, v = _qkv(seed)
  kw, keep = {}, np.ones((NQ, NK), bool)
  if case != "none" and case != "causal":
    lens = rng.integers(0, NK + 1, (2,) if case == "valid_lens" else (2, NQ))
    kw["valid_lens"] = jnp.asarray(lens)
    keep = keep & (np.arange(NK) < (lens[:, None, None, None] if lens.ndim == 1
                                    else lens[:, None, :, None]))
  if case == "causal":
    kw["is_causal"], keep = True, np.tril(keep, k=NK - NQ)
  g = jnp.asarray(rng.normal(size=LEAD + (NQ, DV)), jnp.float32)
  loss = lambda q, k, v: jnp.vdot(F.blockwise_attention(
      q, k, v, block_q=32, block_k=32, group_size=group, **kw), g)  # gradients: one kernel
  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
  out = jax.jit(lambda q, k, v: F.blockwise_attention(q, k, v, block_q=32, block_k=32,
                                                      group_size=group, **kw))(q, k, v)
  ref, ref_grads, _ = _grads_ref(q, k, v, g, keep, None, 1 / np.sqrt(D))
  assert rel_err(out, ref) < 1e-5, (case, seed)
  for name, gr, r in zip("qkv", grads, ref_grads):
    assert rel_err(gr, r) < 1e-5, (case, name, seed)
  if case != "none":  # rows with no valid key: exactly 0 in every group
    empty = ~np.broadcast_to(keep, LEAD + (NQ, NK)).any(-1)
    assert np.all(np.asarray(out)[empty] == 0)
  loops = lambda gs: jax.jit(lambda q, k, v: F.blockwise_attention(
      q, k, v, block_q=32, block_k=32, group_size=gs, **kw)).lower(q, k, v).as_text().count(
          "stablehlo.while")
  assert loops(group) == -(-4 // group) * loops(4) > 0  # one kernel per group


@pytest.mark.parametrize("bwd", [(64, 32), (128, 16), (32, 8)])
def test_backward_with_its_own_tiles(bwd):
  """The backward pass may split the forward's tiles (block_q_bwd, block_k_bwd)."""
  rng = np.random.default_rng(5)
  q, k, v = _qkv(5, nq=200, nk=150)
  m = rng.random((2, 1, 200, 150)) < 0.7
  keep = m & np.tril(np.ones((200, 150), bool), k=-50)
  g = jnp.asarray(rng.normal(size=LEAD + (200, DV)), jnp.float32)
  loss = jax.jit(lambda q, k, v: jnp.vdot(F.blockwise_attention(
      q, k, v, mask=jnp.asarray(m), is_causal=True, block_q=128, block_k=32,
      block_q_bwd=bwd[0], block_k_bwd=bwd[1]), g))
  grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
  _, ref_grads, _ = _grads_ref(q, k, v, g, keep, None, 1 / np.sqrt(D))
  for name, gr, r in zip("qkv", grads, ref_grads):
    assert rel_err(gr, r) < 1e-5, name


def test_attention_dispatch_paths_agree():
  q, k, _ = _qkv(1)
  v = k  # jax.nn ('xla') needs d_v == d_k
  lens = jnp.array([0, 60])
  bias = jax.random.normal(jax.random.key(2), (NQ, NK))
  run = jax.jit(lambda q, k, v, impl: F.attention(q, k, v, valid_lens=lens, bias=bias,
                                                  is_causal=True, implementation=impl),
                static_argnums=3)
  ref = run(q, k, v, "reference")
  for impl in ("blockwise", "xla"):  # 'xla' also zeroes rows with no valid key
    assert rel_err(run(q, k, v, impl), ref) < 1e-5, impl
  assert np.all(np.asarray(ref)[0] == 0)


def test_single_tile_bf16_and_2d_inputs():
  q, k, v = _qkv(3, lead=(), nq=20, nk=30, dtype=jnp.bfloat16)
  out = F.blockwise_attention(q, k, v, is_causal=True)  # default tiles > lengths: one tile
  as32 = lambda x: np.asarray(x.astype(jnp.float32))
  ref, _ = attention_ref(as32(q), as32(k), as32(v), keep=np.tril(np.ones((20, 30), bool), k=10))
  assert out.dtype == jnp.bfloat16 and out.shape == (20, DV)
  assert rel_err(as32(out), ref) < 1e-2


@pytest.mark.parametrize("nq,nk,bq,bk", [(100, 100, 32, 32), (40, 130, 16, 32), (130, 40, 32, 16),
                                         (64, 64, 64, 16)])
def test_causal_visits_exactly_the_tiles_below_the_diagonal(nq, nk, bq, bk):
  """The loops visit a tile iff it has an unmasked entry, and mask it iff it has a masked one."""
  cfg = blockwise._Cfg(bq, bk, bq, bk, nq, nk, True, 1.0, (), 1)
  n_qb, n_kb = -(-nq // bq), -(-nk // bk)
  keep = np.tril(np.ones((n_qb * bq, n_kb * bk), bool), k=nk - nq)
  tile = lambda i, j: keep[i * bq:(i + 1) * bq, j * bk:(j + 1) * bk]
  for i in range(n_qb):
    full, hi = (int(x) for x in blockwise._k_range(cfg, i * bq, n_kb))
    assert [j for j in range(n_kb) if tile(i, j).any()] == list(range(hi))
    assert [j for j in range(hi) if tile(i, j).all()] == list(range(full))
  for j in range(n_kb):
    lo, full, hi = (int(x) for x in blockwise._q_range(cfg, j * bk, n_qb))
    assert [i for i in range(n_qb) if tile(i, j).any()] == list(range(lo, hi))
    assert [i for i in range(lo, hi) if tile(i, j).all()] == list(range(full, hi))


def test_backward_memory_is_linear_in_length():
  n = 2048
  q = jax.ShapeDtypeStruct((1, 2, n, 32), jnp.float32)
  step = jax.jit(jax.grad(lambda q, k, v: F.blockwise_attention(
      q, k, v, block_q=256, block_k=256).sum(), argnums=(0, 1, 2)))
  temp = step.lower(q, q, q).compile().memory_analysis().temp_size_in_bytes
  assert temp < 2 * n * n * 4 / 8, temp  # far below one dense [2, N, N] f32 score matrix


def test_select_implementation():
  sds = lambda n, d=64, dt=jnp.bfloat16: jax.ShapeDtypeStruct((2, 4, n, d), dt)
  sel = backends.select_implementation
  assert sel(sds(64), sds(64), sds(64), backend="gpu") == "cudnn"
  assert sel(sds(64, dt=jnp.float32), sds(64, dt=jnp.float32), sds(64, dt=jnp.float32),
             backend="gpu") == "xla"
  assert sel(sds(64, d=100), sds(64, d=100), sds(64, d=100), backend="gpu") == "xla"
  assert sel(sds(63), sds(63), sds(63), mask=jnp.ones((63, 63), bool), backend="gpu") == "xla"
  assert sel(sds(64), sds(64), sds(64), return_weights=True, backend="gpu") == "reference"
  assert sel(sds(64), sds(64), sds(64), backend="tpu") == "xla"
  assert sel(sds(64), sds(64), sds(64, d=32), backend="gpu") == "reference"  # d_v != d_k
  big = int(np.sqrt(backends.CPU_BLOCKWISE_MIN_SCORES)) + 1
  assert sel(sds(big), sds(big), sds(big), backend="cpu") == "blockwise"
  assert sel(sds(big), sds(big), sds(big), dropout_rate=0.1, backend="cpu") == "reference"
  assert sel(sds(8), sds(8), sds(8), backend="cpu") == "reference"
  assert sel(sds(big), sds(big), sds(big), custom_scorer=True, backend="cpu") == "reference"


def test_dispatch_errors():
  q, k, v = _qkv(4)
  with pytest.raises(ValueError, match="blockwise"):
    F.attention(q, k, v, implementation="blockwise", return_weights=True)
  if jax.default_backend() != "gpu":
    with pytest.raises(ValueError, match="GPU"):
      F.attention(q, k, v, implementation="cudnn")
  with pytest.raises(F.ShapeError, match="'mask'"):
    F.blockwise_attention(q, k, v, mask=jnp.ones((3, NQ, NK), bool))
  with pytest.raises(ValueError, match="'block_q_bwd'=24 must divide block_q=32"):
    F.blockwise_attention(q, k, v, block_q=32, block_k=32, block_q_bwd=24)


@pytest.mark.parametrize("backend", ["cpu", "gpu", "tpu"])
@pytest.mark.parametrize("z", [1, 8, 32, 256])
def test_default_blocks_respect_the_budgets(backend, z):
  t = tiling.TILES[backend]
  for causal in (False, True):
    bq, bk, bqb, bkb = tiling.default_blocks(z, causal, backend)
    cap = t.max_block_q_causal if causal else t.max_block_q
    assert (bk, bkb) == (t.block_k, t.block_k_bwd) and bq % bqb == 0
    assert tiling.MIN_BLOCK_Q <= bq <= cap and bqb <= bq
    assert z * bq * bk <= t.scores or bq == tiling.MIN_BLOCK_Q
    assert z * bqb * bkb <= t.scores_bwd or bqb == tiling.MIN_BLOCK_Q
    assert bq == tiling.MIN_BLOCK_Q or bq == cap or z * 2 * bq * bk > t.scores  # largest
  # Short causal sequences: square tiles within their own budgets (where the backend has
  # them); one backward tile when one forward tile covers the sequence.
  n = t.max_block_q_causal
  short = tiling.default_blocks(z, True, backend, q_len=n, kv_len=2 * n)
  if not t.short_causal:
    assert short == tiling.default_blocks(z, True, backend, q_len=n + 1)
    return
  bq, bk, bqb, bkb = short
  assert bq == bk and bqb == bkb and bq % bqb == 0 and bq <= n
  for side, budget, cap in ((bq, t.short_causal, n), (bqb, t.short_causal_bwd, bq)):
    assert side == tiling.MIN_BLOCK_Q or z * side * side <= budget
    assert side == tiling.MIN_BLOCK_Q or side == cap or z * 4 * side * side > budget
  one = tiling.default_blocks(z, True, backend, q_len=bq, kv_len=bq)
  assert one == ((bq,) * 4 if z * bq * bq <= t.scores_bwd else short)
  # Forward row groups: at least group_rows rows, at most max_groups groups; none for
  # short causal sequences.
  g = tiling.group_rows(z, False, 4096, backend)
  assert g == z or (t.group_rows <= g < z and -(-z // g) <= t.max_groups)
  assert g == z or z > t.group_rows
  assert tiling.group_rows(z, True, n, backend) == z


def test_benchmark_script_smoke(tmp_path, capsys):
  from experiments import bench_attention
  out = tmp_path / "bench.json"
  cells = bench_attention.main(["--sizes", "64", "--batches", "1", "--causal", "1",
                                "--modes", "fwd,fwdbwd", "--peers", "default,xla",
                                "--repeats", "1", "--min-seconds", "0", "--rounds", "2",
                                "--rss", "", "--ceiling-n",
                                "256", "--out", str(out)])
  text = capsys.readouterr().out
  assert len(cells) == 2 and all(len(c["samples"]["xla"]) == 2 for c in cells)
  assert "| fwdbwd | yes | 1 | 64 |" in text and out.exists()
  assert all(len(c["faults"]["xla"]) == 2 and min(c["faults"]["xla"]) >= 0 for c in cells)
  assert json.loads(out.read_text())["malloc"] == "default"
  again = bench_attention.main(["--table", str(out)])  # re-print the saved run
  assert len(again) == 2 and "| fwdbwd | yes | 1 | 64 |" in capsys.readouterr().out


def test_benchmark_malloc_keep_runs_in_a_child_with_the_settings(tmp_path):
  from experiments import bench_attention
  out = tmp_path / "bench.json"
  cells = bench_attention.main(["--malloc", "keep", "--sizes", "64", "--batches", "1",
                                "--causal", "0", "--modes", "fwd", "--peers", "xla",
                                "--repeats", "1", "--min-seconds", "0", "--rounds", "1",
                                "--rss", "", "--ceiling-n", "256", "--out", str(out)])
  assert json.loads(out.read_text())["malloc"] == "keep"
  assert len(cells) == 1 and len(cells[0]["samples"]["xla"]) == 1
  assert bench_attention.malloc_mode() == "default"  # this process is untouched


def test_modules_dispatch_to_blockwise_at_long_lengths():
  """MultiHeadAttention goes through F.attention, so long inputs trace the custom-VJP kernel."""
  if jax.default_backend() != "cpu":
    pytest.skip("the CPU threshold rule")
  from attn_jax.layers.attention import MultiHeadAttention
  layer = MultiHeadAttention(num_heads=2)
  params = layer.init(jax.random.key(0), jnp.ones((1, 8, 16)))
  trace = lambda n: str(jax.make_jaxpr(lambda x: layer.apply(params, x, is_causal=True))(
      jax.ShapeDtypeStruct((1, n, 16), jnp.float32)))
  assert "custom_vjp" in trace(1024) and "custom_vjp" not in trace(64)
