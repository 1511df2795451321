"""MultiHeadAttention with the variants: GQA heads, windows, soft-capping, RoPE / ALiBi, the KV
cache, and segment ids with per-segment positions (packed sequences)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax import functional as F
from attn_jax.layers import MultiHeadAttention
from reference import rel_err

CONFIGS = [dict(num_kv_heads=1, position="rope", softcap=5.0),
           dict(num_kv_heads=2, position="alibi", window=(2, 0))]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["mqa_rope_softcap", "gqa_alibi_window"])
def test_decoding_with_the_cache_equals_the_full_causal_pass(cfg):
  x = jax.random.normal(jax.random.key(np.random.SeedSequence().entropy % 2**31), (2, 7, 16))
  m = MultiHeadAttention(4, **cfg)
  params = jax.jit(m.init)(jax.random.key(1), x)["params"]
  kv = cfg["num_kv_heads"]
  assert params["W_k"].shape == (16, 4 * kv) and params["W_v"].shape == (16, 4 * kv)
  assert params["W_q"].shape == (16, 16) and params["W_o"].shape == (16, 16)
  full = jax.jit(lambda p, x: m.apply({"params": p}, x, is_causal=True))(params, x)
  md = MultiHeadAttention(4, decode=True, **cfg)
  cache = jax.jit(md.init)(jax.random.key(1), x)["cache"]
  assert cache["cached_key"].shape == (2, kv, 7, 4)  # the cache holds the K/V heads only
  step = jax.jit(lambda p, c, x: md.apply({"params": p, "cache": c}, x, mutable=["cache"]))
  outs = []
  for t in range(7):
    o, upd = step(params, cache, x[:, t:t + 1])
    cache = upd["cache"]
    outs.append(o)
  assert rel_err(jnp.concatenate(outs, 1), full) < 1e-5


def test_layer_pieces_and_packed_sequences():
  """RoPE + GQA is project, rotate, attend; two sequences packed into one row (segment ids,
  positions restarting per segment) give what each gives alone: the hook a packed
  decoder-only LM needs. num_kv_heads == num_heads is the plain layer."""
  ks = jax.random.split(jax.random.key(3), 2)
  a, b = jax.random.normal(ks[0], (1, 5, 16)), jax.random.normal(ks[1], (1, 7, 16))
  m = MultiHeadAttention(4, num_kv_heads=2, position="rope")
  params = jax.jit(m.init)(jax.random.key(4), a)
  run = jax.jit(lambda x, **kw: m.apply(params, x, is_causal=True, **kw))

  def pieces(p, x):
    q = F.apply_rotary(F.project_heads(x, p["W_q"], p["b_q"], 4))
    k = F.apply_rotary(F.project_heads(x, p["W_k"], p["b_k"], 2))
    v = F.project_heads(x, p["W_v"], p["b_v"], 2)
    out = F.attention(q, k, v, is_causal=True, implementation="reference")
    return F.project_out(out, p["W_o"], p["b_o"])

  assert rel_err(run(b), jax.jit(pieces)(params["params"], b)) < 1e-5
  ids = jnp.asarray([[0] * 5 + [1] * 7])
  pos = jnp.asarray([list(range(5)) + list(range(7))])
  packed = run(jnp.concatenate([a, b], 1), q_segment_ids=ids, positions=pos)
  assert rel_err(packed[:, :5], run(a)) < 1e-5
  assert rel_err(packed[:, 5:], run(b)) < 1e-5
  shapes = lambda mod: jax.tree.map(lambda x: x.shape, jax.eval_shape(mod.init, ks[0], a))
  assert shapes(MultiHeadAttention(4, num_kv_heads=4)) == shapes(MultiHeadAttention(4))
  with pytest.raises(ValueError, match="segment ids"):
    MultiHeadAttention(4, decode=True).init(jax.random.key(0), a, q_segment_ids=ids[:, :5])
  with pytest.raises(ValueError, match="num_kv_heads=3"):
    MultiHeadAttention(4, num_kv_heads=3).init(jax.random.key(0), a)
  with pytest.raises(ValueError, match="position"):
    MultiHeadAttention(4, position="learned").init(jax.random.key(0), a)


def test_vit_takes_gqa_and_softcap_from_its_config_keys():
  from attn_jax.vision.vit import ViT
  images = jnp.zeros((2, 8, 8, 1))
  model = ViT(num_classes=3, patch_size=4, width=16, depth=1, num_heads=4, mlp_dim=32,
              num_kv_heads=1, softcap=5.0)
  params = model.init(jax.random.key(0), images)["params"]
  assert params["block0"]["attn"]["W_k"].shape == (16, 4)   # one K/V head of 16 / 4
  assert model.apply({"params": params}, images).shape == (2, 3)
