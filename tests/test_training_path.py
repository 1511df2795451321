"""One training path: every registry model trains through the task-typed step on the fast
attention path, in float32 and bfloat16, unrolled or scanned / rematerialised, and from NNX.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from attn_jax.layers import stack_params
from attn_jax.train import models as models_lib
from attn_jax.train import step as step_lib
from reference import rel_err

# Tiny sizes per registry model. ViT: 256 patches + the class token; Swin: one 16x16 window;
# Transformer: 256 tokens. From 256 x 256 scores per head the CPU dispatch runs the
# blockwise kernel, so these shapes exercise the kernel the models train with.
TINY = {
    "mlp": dict(widths=(16,)),
    "cnn": dict(widths=(4,), mlp_dim=8),
    "stn_cnn": dict(widths=(4,), mlp_dim=8, stn_widths=(4,), stn_mlp_dim=8),
    "resnet": dict(depth=(1,), width=4, attention="cbam", reduction=2),
    "vit": dict(patch_size=2, width=16, depth=2, num_heads=2, mlp_dim=32),
    "swin": dict(patch_size=1, window_size=16, width=8, depth=(2,), num_heads=(2,),
                 drop_path_rate=0.0),
    "seq2seq": dict(embed_width=8, width=16),
    "transformer": dict(width=16, num_heads=2, mlp_dim=32, depth=2, max_len=256,
                        dropout_rate=0.0),
}
SIDE = {"vit": 32, "swin": 16}
SEQ_LEN = 256
ATTENTION_MODELS = ("vit", "swin", "transformer")


class _Cfg(dict):
  """The bits of an ml_collections model config `build_model` reads."""
  def __getattr__(self, k):
    return self[k]


def _batch(name: str, seq_len: int = SEQ_LEN):
  rng = np.random.default_rng(0)
  spec = models_lib.spec_of(name)
  if spec.task.data_kind == "image":
    s = SIDE.get(name, 16)
    return {"image": jnp.asarray(rng.normal(size=(2, s, s, 1)), jnp.float32),
            "label": jnp.asarray([0, 2], jnp.int32)}
  toks = lambda: jnp.asarray(rng.integers(3, 20, size=(2, seq_len)), jnp.int32)
  return {"src": toks(), "tgt_in": toks(), "tgt_out": toks()}


def _build(name: str, dtype=jnp.float32, **kw):
  info = {"num_classes": 3, "src_vocab": 20, "tgt_vocab": 20}
  return models_lib.build_model(_Cfg(name=name, **{**TINY[name], **kw}), info, dtype)


def _state_and_step(name: str, dtype=jnp.float32, **kw):
  model, task = _build(name, dtype, **kw)
  tx = optax.adam(1e-3)
  batch = _batch(name)
  state = jax.jit(step_lib.make_init_fn(model, task, tx, batch, 0))()
  step = step_lib.make_train_step(model, task, tx, lambda s: 1e-3, 0.0)
  return model, task, state, step, batch


def _shapes(jaxpr_text: str) -> set[str]:
  return set(re.findall(r"f32\[([\d,]+)\]", jaxpr_text))


@pytest.mark.parametrize("name", ATTENTION_MODELS)
def test_training_step_runs_the_blockwise_kernel_without_weights(name):
  _, _, state, step, batch = _state_and_step(name)
  text = str(jax.make_jaxpr(step)(state, batch))
  assert "name=_blockwise_kernel" in text      # the blockwise kernel (forward + custom VJP)
  n = {"vit": 257, "swin": 256, "transformer": SEQ_LEN}[name]
  heads = 2
  # No [batch, heads, q, k] weights. (At these lengths one kernel tile [batch * heads, q, k]
  # covers the whole sequence; the kernel's tiles are what the check leaves alone.)
  assert f"2,{heads},{n},{n}" not in _shapes(text)


@pytest.mark.parametrize("name", ATTENTION_MODELS)
def test_requested_maps_come_from_the_reference_path_and_match(name):
  model, task, state, _, batch = _state_and_step(name)
  variables = {"params": state.params, **state.model_state}
  fast = jax.jit(lambda v: task.apply(model, v, batch))(variables)
  slow, inter = jax.jit(lambda v: task.apply(model, v, batch, mutable=["intermediates"]))(
      variables)
  assert rel_err(fast, slow) < 1e-5
  maps = [a for a in jax.tree.leaves(inter) if a.ndim >= 4]
  assert maps and all(np.allclose(np.asarray(a).sum(-1), 1.0, atol=1e-4) for a in maps)
  text = str(jax.make_jaxpr(lambda v: task.apply(model, v, batch,
                                                 mutable=["intermediates"]))(variables))
  assert "name=_blockwise_kernel" not in text


@pytest.mark.parametrize("name", sorted(TINY))
def test_bfloat16_trains_every_family_with_float32_params(name):
  """bf16 compute: params stay float32; the first losses are finite and close to float32's."""
  losses = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    kw = {"max_len": 32} if name == "transformer" else {}
    model, task = _build(name, dtype, **kw)
    tx = optax.adam(1e-3)
    batch = _batch(name, seq_len=16)
    state = jax.jit(step_lib.make_init_fn(model, task, tx, batch, 0))()
    step = jax.jit(step_lib.make_train_step(model, task, tx, lambda s: 1e-3, 0.0))
    ls = []
    for _ in range(3):
      state, m = step(state, batch)
      ls.append(float(m["loss"]))
    assert {a.dtype for a in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
    losses[dtype] = np.array(ls)
    if dtype == jnp.bfloat16:
      text = str(jax.make_jaxpr(lambda p: task.apply(model, {"params": p, **state.model_state},
                                                     batch))(state.params))
      assert "bf16[" in text, "no computation in bfloat16"
  f32, bf16 = losses[jnp.float32], losses[jnp.bfloat16]
  assert np.all(np.isfinite(bf16))
  np.testing.assert_allclose(bf16, f32, rtol=0.05, atol=0.05)


def test_unsupported_dtype_is_an_error_naming_the_key():
  import flax.linen as nn

  class NoDtype(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train=False):
      return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))

  models_lib.REGISTRY["_nodtype"] = models_lib.ModelSpec(
      f"{__name__}:_NoDtypeHolder", models_lib.REGISTRY["mlp"].task, {"num_classes": "num_classes"})
  globals()["_NoDtypeHolder"] = NoDtype
  try:
    with pytest.raises(ValueError, match=r"config.dtype='bfloat16'.*_nodtype"):
      models_lib.build_model(_Cfg(name="_nodtype"), {"num_classes": 3}, jnp.bfloat16)
  finally:
    del models_lib.REGISTRY["_nodtype"]


def _swin_to_pairs(params):
  """Unrolled Swin params -> the scanned (W-MSA, SW-MSA) pair layout."""
  out = {}
  for k, v in params.items():
    m = re.fullmatch(r"stage(\d+)_block(\d+)", k)
    if not m:
      out[k] = v
      continue
    i, j = map(int, m.groups())
    pair = out.setdefault(f"stage{i}_pair_scan", {}).setdefault(j // 2, {})
    pair[f"block{j % 2}"] = v
  for k in [k for k in out if k.endswith("_pair_scan")]:
    pairs = [out[k][n] for n in sorted(out[k])]
    out[k] = jax.tree.map(lambda *a: np.stack(a), *pairs)
  return out


def _loss_and_grads(model, task, params, batch):
  def loss(p):
    logits = task.apply(model, {"params": p}, batch)
    return task.metric_sums(logits, batch, 0.0)["loss_sum"]
  return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("name", ATTENTION_MODELS)
@pytest.mark.parametrize("variant", ["scan", "remat", "scan+remat"])
def test_scan_and_remat_equal_the_unrolled_model(name, variant):
  kw = {"max_len": 32} if name == "transformer" else {}
  base, task = _build(name, **kw)
  batch = _batch(name, seq_len=16)
  params = jax.jit(lambda: base.init(jax.random.key(0), *task.inputs(batch)))()["params"]
  params = jax.tree.map(np.asarray, params)
  scan = "scan" in variant
  other, _ = _build(name, scan_layers=scan, remat="full" if "remat" in variant else "none", **kw)
  converted = params
  if scan:
    converted = _swin_to_pairs(params) if name == "swin" else stack_params(params, "layer", 2) \
        if name == "transformer" else stack_params(params, "block", 2)
  l0, g0 = _loss_and_grads(base, task, params, batch)
  l1, g1 = _loss_and_grads(other, task, converted, batch)
  assert abs(float(l0) - float(l1)) <= 1e-5 * abs(float(l0))
  if scan:
    g0 = (_swin_to_pairs(g0) if name == "swin" else
          stack_params(g0, "layer" if name == "transformer" else "block", 2))
  flat = lambda g: np.concatenate([np.ravel(a) for a in jax.tree.leaves(g)])
  assert rel_err(flat(g1), flat(g0)) < 1e-5   # (key-bias gradients are ~0: compare globally)


def test_models_are_usable_from_nnx_through_the_bridge():
  from flax import nnx
  model, task = _build("vit")
  batch = _batch("vit")
  x = batch["image"]
  m = nnx.bridge.ToNNX(model, rngs=nnx.Rngs(0))
  nnx.bridge.lazy_init(m, x)
  params = nnx.to_pure_dict(nnx.state(m, nnx.Param))
  np.testing.assert_allclose(np.asarray(m(x)), np.asarray(model.apply({"params": params}, x)),
                             rtol=1e-6, atol=1e-6)

  def nnx_loss(mod):
    return task.metric_sums(mod(x), batch, 0.0)["loss_sum"]

  def linen_loss(p):
    return task.metric_sums(model.apply({"params": p}, x), batch, 0.0)["loss_sum"]

  g_nnx = nnx.to_pure_dict(nnx.grad(nnx_loss)(m))
  g_linen = jax.grad(linen_loss)(params)
  for a, b in zip(jax.tree.leaves(g_nnx), jax.tree.leaves(g_linen)):
    assert rel_err(a, b) < 1e-5
