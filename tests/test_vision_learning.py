"""Learning, not just shapes: tiny ViT, Swin and CBAM-ResNet each learn a generated shape task.

16x16 grey images with noise, 4 classes drawn at random positions and sizes: a horizontal
bar, a vertical bar, a filled square, a hollow square. Chance is 25%; fixed seeds and
step counts; accuracy on 512 held-out images must beat 90%.
"""
import jax
import numpy as np
import optax
import pytest

from attn_jax import ResNet, SwinTransformer, ViT

from test_vision_transformers import KEY  # rbg keys: fast init compiles


def make_shapes(n: int, size: int = 16, seed: int = 0):
  """images [n, size, size, 1] float32, labels [n] int32 in {0, 1, 2, 3}."""
  rng = np.random.RandomState(seed)
  x = np.zeros((n, size, size, 1), np.float32)
  y = rng.randint(0, 4, n).astype(np.int32)
  for i in range(n):
    if y[i] < 2:                                   # bar: horizontal (0) or vertical (1)
      length, a = rng.randint(6, 11), rng.randint(0, size)
      b = rng.randint(0, size - length + 1)
      if y[i] == 0:
        x[i, a, b:b + length] = 1
      else:
        x[i, b:b + length, a] = 1
    else:                                          # square: filled (2) or hollow (3)
      s = rng.randint(3, 6) if y[i] == 2 else rng.randint(5, 8)
      r, c = rng.randint(0, size - s + 1, 2)
      x[i, r:r + s, c:c + s] = 1
      if y[i] == 3:
        x[i, r + 1:r + s - 1, c + 1:c + s - 1] = 0
  x += 0.1 * rng.randn(*x.shape).astype(np.float32)
  return x, y


def train_and_evaluate(model, steps: int, lr: float = 3e-3, batch: int = 64) -> float:
  """AdamW with warm-up + cosine decay for `steps` steps; returns held-out accuracy."""
  xtr, ytr = make_shapes(4096, seed=1)
  xte, yte = make_shapes(512, seed=2)
  variables = jax.jit(model.init)(KEY(0), xtr[:2])
  params = variables["params"]
  state = {k: v for k, v in variables.items() if k != "params"}   # batch_stats for the ResNet
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, steps // 10, steps),
                   weight_decay=1e-4)
  opt = tx.init(params)

  @jax.jit
  def step(params, state, opt, x, y, key):
    def loss_fn(p):
      logits, new_state = model.apply({"params": p, **state}, x, train=True,
                                      rngs={"dropout": key}, mutable=list(state))
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_state
    (_, new_state), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), new_state, opt

  rng = np.random.RandomState(0)
  keys = jax.random.split(KEY(1), steps)
  for i in range(steps):
    idx = rng.randint(0, len(xtr), batch)
    params, state, opt = step(params, state, opt, xtr[idx], ytr[idx], keys[i])
  pred = jax.jit(lambda p, s, x: model.apply({"params": p, **s}, x).argmax(-1))(params, state, xte)
  return float((np.asarray(pred) == yte).mean())


def test_generated_task_is_balanced_and_not_trivial():
  x, y = make_shapes(512, seed=2)
  assert np.bincount(y).min() > 100                   # four roughly equal classes
  # total brightness does not give the class away (bars and squares overlap in pixel count)
  mass = x.sum((1, 2, 3))
  assert mass[y == 0].max() > mass[y == 2].min() and mass[y == 3].max() > mass[y == 0].min()


@pytest.mark.slow
def test_tiny_vit_learns():
  vit = ViT(4, patch_size=4, width=32, depth=2, num_heads=2, mlp_dim=64)
  assert train_and_evaluate(vit, steps=200) > 0.9


@pytest.mark.slow
def test_tiny_swin_learns():
  swin = SwinTransformer(4, patch_size=2, window_size=4, width=16, depth=(2, 2),
                         num_heads=(2, 4), drop_path_rate=0.0)
  assert train_and_evaluate(swin, steps=200) > 0.9


@pytest.mark.slow
def test_cbam_resnet_learns():
  resnet = ResNet(4, depth=(1, 1), width=8, attention="cbam", reduction=4)
  assert train_and_evaluate(resnet, steps=100) > 0.9
