"""Plain Flax peers of the project's ViT, Swin and Transformer for `experiments.bench_train`.

Written the way a user would write them from `flax.linen` alone: attention is
`nn.MultiHeadDotProductAttention` (Swin: inside windows, the relative position bias and the
shifted-window mask passed as its `bias` / `mask`), with the same sizes and parameter counts
as the project's models, and a hand-written `jax.value_and_grad` + `jax.jit` train step.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from attn_jax.tokens import PAD

Batch = dict[str, Any]


class PeerMlp(nn.Module):
  """Dense(mlp_dim) -> activation -> dropout -> Dense(width). x: [..., width] -> same."""
  mlp_dim: int
  activation: Callable[[jax.Array], jax.Array] = functools.partial(nn.gelu, approximate=False)
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = self.activation(nn.Dense(self.mlp_dim)(x))
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    return nn.Dense(x.shape[-1])(y)


class PeerViT(nn.Module):
  """A plain ViT: patch conv, class token, learned positions, pre-LN blocks of
  `nn.MultiHeadDotProductAttention` + MLP (exact GELU, as the project's), final LN, head.
  images [b, h, w, c] -> logits [b, num_classes]."""
  num_classes: int
  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    p = self.patch_size
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID")(images)
    b, h, w, d = x.shape
    x = x.reshape(b, h * w, d)
    cls = self.param("cls", nn.initializers.zeros, (1, 1, d))
    x = jnp.concatenate([jnp.tile(cls, (b, 1, 1)), x], axis=1)
    x = x + self.param("pos_embedding", nn.initializers.normal(0.02), (1, h * w + 1, d))
    for _ in range(self.depth):
      y = nn.LayerNorm()(x)
      x = x + nn.MultiHeadDotProductAttention(self.num_heads)(y, deterministic=not train)
      x = x + PeerMlp(self.mlp_dim)(nn.LayerNorm()(x), train)
    x = nn.LayerNorm()(x)[:, 0]
    return nn.Dense(self.num_classes)(x)


def _relative_index(m: int) -> np.ndarray:
  """[M*M, M*M] index into a ((2M-1)^2)-row relative position bias table (Swin's)."""
  coords = np.stack(np.meshgrid(np.arange(m), np.arange(m), indexing="ij")).reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (m - 1)
  return rel[..., 0] * (2 * m - 1) + rel[..., 1]


def _shift_mask(h: int, w: int, m: int, s: int) -> np.ndarray:
  """Shifted-window mask [num_windows, M*M, M*M], True = same region (may attend)."""
  img = np.zeros((h, w), np.int32)
  cnt = 0
  for hs in (slice(0, -m), slice(-m, -s), slice(-s, None)):
    for ws in (slice(0, -m), slice(-m, -s), slice(-s, None)):
      img[hs, ws] = cnt
      cnt += 1
  win = img.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).reshape(-1, m * m)
  return win[:, :, None] == win[:, None, :]


def _windows(x: jax.Array, m: int) -> jax.Array:
  b, h, w, c = x.shape
  x = x.reshape(b, h // m, m, w // m, m, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // m) * (w // m), m * m, c)


def _unwindows(y: jax.Array, m: int, h: int, w: int) -> jax.Array:
  b, _, _, c = y.shape
  y = y.reshape(b, h // m, w // m, m, m, c).transpose(0, 1, 3, 2, 4, 5)
  return y.reshape(b, h, w, c)


class PeerSwinBlock(nn.Module):
  """(S)W-MSA block with `nn.MultiHeadDotProductAttention` inside M x M windows and the
  relative position bias passed as the attention `bias`. x: [b, h, w, c] -> same
  (h, w divisible by the window: no padding needed at 32 px, patch 2, window 4)."""
  num_heads: int
  window: int
  shift: int
  mlp_ratio: float = 4.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    _, h, w, c = x.shape
    m, s = (min(h, w), 0) if min(h, w) <= self.window else (self.window, self.shift)
    y = nn.LayerNorm()(x)
    if s:
      y = jnp.roll(y, (-s, -s), axis=(1, 2))
    table = self.param("relative_position_bias_table", nn.initializers.truncated_normal(0.02),
                       ((2 * m - 1) ** 2, self.num_heads))
    bias = table[_relative_index(m).reshape(-1)].reshape(m * m, m * m, -1).transpose(2, 0, 1)
    mask = jnp.asarray(_shift_mask(h, w, m, s))[:, None] if s else None  # [nW, 1, q, k]
    attn = nn.MultiHeadDotProductAttention(
        self.num_heads, attention_fn=functools.partial(nn.dot_product_attention, bias=bias))
    y = attn(_windows(y, m), mask=mask, deterministic=not train)
    y = _unwindows(y, m, h, w)
    if s:
      y = jnp.roll(y, (s, s), axis=(1, 2))
    x = x + y
    return x + PeerMlp(int(c * self.mlp_ratio))(nn.LayerNorm()(x), train)


class PeerSwin(nn.Module):
  """A plain Swin: patch conv + LN, stages of alternating W-MSA / SW-MSA blocks, 2x2 patch
  merging (LN, bias-free Dense 4C -> 2C), final LN, mean pool, head.
  images [b, h, w, c] -> logits [b, num_classes]."""
  num_classes: int
  patch_size: int
  window: int
  width: int
  depth: Sequence[int]
  num_heads: Sequence[int]
  mlp_ratio: float = 4.0

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    p = self.patch_size
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID")(images)
    x = nn.LayerNorm()(x)
    for i, (depth, heads) in enumerate(zip(self.depth, self.num_heads)):
      for j in range(depth):
        x = PeerSwinBlock(heads, self.window, 0 if j % 2 == 0 else self.window // 2,
                          self.mlp_ratio)(x, train)
      if i < len(self.depth) - 1:
        x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2],
                             x[:, 1::2, 1::2]], axis=-1)
        x = nn.Dense(x.shape[-1] // 2, use_bias=False)(nn.LayerNorm()(x))
    x = nn.LayerNorm()(x).mean(axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


def _sinusoid(length: int, dim: int) -> np.ndarray:
  pos = np.arange(length)[:, None]
  ang = pos / 10000.0 ** (np.arange(0, dim, 2) / dim)
  return np.stack([np.sin(ang), np.cos(ang)], axis=-1).reshape(length, dim).astype(np.float32)


class PeerTransformer(nn.Module):
  """A plain post-LN encoder-decoder (Flax WMT example style masks) with
  `nn.MultiHeadDotProductAttention`, ReLU MLP, sinusoidal positions, embeddings scaled by
  sqrt(width). src [b, S], tgt_in [b, T] int32 -> logits [b, T, tgt_vocab]."""
  src_vocab: int
  tgt_vocab: int
  width: int
  num_heads: int
  mlp_dim: int
  depth: int
  dropout_rate: float = 0.1

  def _sub(self, x: jax.Array, y: jax.Array, train: bool) -> jax.Array:
    return nn.LayerNorm(1e-5)(x + nn.Dropout(self.dropout_rate)(y, deterministic=not train))

  @nn.compact
  def __call__(self, src: jax.Array, tgt_in: jax.Array, train: bool = False) -> jax.Array:
    det = not train
    mlp = lambda: PeerMlp(self.mlp_dim, nn.relu, self.dropout_rate)
    pos = _sinusoid(max(src.shape[1], tgt_in.shape[1]), self.width)
    src_mask = nn.make_attention_mask(src != PAD, src != PAD)
    tgt_mask = nn.combine_masks(nn.make_attention_mask(tgt_in != PAD, tgt_in != PAD),
                                nn.make_causal_mask(tgt_in))
    cross_mask = nn.make_attention_mask(tgt_in != PAD, src != PAD)
    x = nn.Embed(self.src_vocab, self.width)(src) * math.sqrt(self.width) + pos[:src.shape[1]]
    x = nn.Dropout(self.dropout_rate)(x, deterministic=det)
    for _ in range(self.depth):
      x = self._sub(x, nn.MultiHeadDotProductAttention(self.num_heads)(
          x, mask=src_mask, deterministic=det), train)
      x = self._sub(x, mlp()(x, train), train)
    memory = x
    y = nn.Embed(self.tgt_vocab, self.width)(tgt_in) * math.sqrt(self.width)
    y = nn.Dropout(self.dropout_rate)(y + pos[:tgt_in.shape[1]], deterministic=det)
    for _ in range(self.depth):
      y = self._sub(y, nn.MultiHeadDotProductAttention(self.num_heads)(
          y, mask=tgt_mask, deterministic=det), train)
      y = self._sub(y, nn.MultiHeadDotProductAttention(self.num_heads)(
          y, memory, mask=cross_mask, deterministic=det), train)
      y = self._sub(y, mlp()(y, train), train)
    return nn.Dense(self.tgt_vocab)(y)


def make_peer_step(model: nn.Module, kind: str, num_classes: int, label_smoothing: float,
                   seed: int = 0) -> Callable:
  """A hand-written `train_step(state, batch) -> (state, {'loss', 'accuracy'})`, jitted
  with the state donated: what a user writes around a plain Flax model."""
  base_rng = jax.random.PRNGKey(seed)

  def train_step(state: train_state.TrainState, batch: Batch):
    rng = jax.random.fold_in(base_rng, state.step)
    if kind == "transformer":
      inputs, labels = (batch["src"], batch["tgt_in"]), batch["tgt_out"]
      weights = (labels != PAD).astype(jnp.float32)
    else:
      inputs, labels = (batch["image"],), batch["label"]
      weights = jnp.ones(labels.shape, jnp.float32)

    def loss_fn(params):
      logits = state.apply_fn({"params": params}, *inputs, train=True, rngs={"dropout": rng})
      targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
      loss = (optax.softmax_cross_entropy(logits, targets) * weights).sum() / weights.sum()
      return loss, logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads)
    acc = ((logits.argmax(-1) == labels) * weights).sum() / weights.sum()
    return state, {"loss": loss, "accuracy": acc}

  return jax.jit(train_step, donate_argnums=0)


