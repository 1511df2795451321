"""Sampling from a decoder-only language model with a key/value cache.

    out = sample(model, params, prompt, max_new_tokens=50, key=jax.random.key(0),
                 temperature=0.8, top_k=40, top_p=0.95)
    out.tokens   # [batch, prompt_len + max_new_tokens] int32 (prompt included)

The prompt is run once through the model (prefill, filling the cache), then one token per
step inside a `lax.scan`, each step feeding the sampled token at its position. `filter_logits`
applies temperature, top-k and nucleus (top-p) filtering; `temperature=0` is greedy.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Samples(NamedTuple):
  """What `sample` returns.

  Attributes:
    tokens: [batch, prompt_len + max_new_tokens] int32, the prompt included.
    logits: [batch, max_new_tokens, vocab] float32, the logits each new token came from.
  """
  tokens: jax.Array   # [batch, prompt_len + max_new_tokens] int32
  logits: jax.Array   # [batch, max_new_tokens, vocab] float32: the logits each token came from


def filter_logits(logits: jax.Array, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
  """Temperature, top-k and nucleus (top-p) filtering of next-token logits.

  Args:
    logits: [..., vocab].
    temperature: divides the logits (> 0).
    top_k: keep the k largest (0 = all).
    top_p: keep the smallest set of most likely ids whose probability reaches p (the most
      likely id is always kept; 1.0 = all).

  Returns:
    [..., vocab] float32 scaled logits, the filtered-out ids at -inf.
  """
  if temperature <= 0:
    raise ValueError(f"filter_logits: temperature must be > 0 (use greedy for 0), got "
                     f"{temperature}.")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"filter_logits: top_p must be in (0, 1], got {top_p}.")
  x = logits.astype(jnp.float32) / temperature
  neg = jnp.array(-jnp.inf, x.dtype)
  if top_k:
    kth = jax.lax.top_k(x, min(top_k, x.shape[-1]))[0][..., -1:]
    x = jnp.where(x < kth, neg, x)
  if top_p < 1.0:
    order = jnp.argsort(-x, axis=-1)
    sorted_x = jnp.take_along_axis(x, order, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(sorted_x, axis=-1), axis=-1)
    drop_sorted = (cum - jax.nn.softmax(sorted_x, axis=-1)) >= top_p   # mass before it >= p
    drop = jnp.zeros_like(drop_sorted).at[
        tuple(jnp.indices(order.shape)[:-1]) + (order,)].set(drop_sorted)
    x = jnp.where(drop, neg, x)
  return x


def sample(model, params, prompt: jax.Array, max_new_tokens: int, key: jax.Array, *,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Samples:
  """Continues `prompt` by `max_new_tokens` tokens with the key/value cache. Runs under `jax.jit`.

  Args:
    model: a `TransformerLM` (cloned with `decode=True` inside).
    params: its params.
    prompt: [batch, prompt_len] int32, all rows the same length (e.g. BOS alone).
    max_new_tokens: tokens to generate.
    key: PRNG key of the sampling.
    temperature: 0: greedy (argmax); else sampled from `filter_logits(logits,
      temperature, top_k, top_p)`.
    top_k: see `filter_logits`.
    top_p: see `filter_logits`.

  Returns:
    `Samples`: tokens [batch, prompt_len + max_new_tokens], logits
    [batch, max_new_tokens, vocab].
  """
  if prompt.ndim != 2 or prompt.shape[1] < 1:
    raise ValueError(f"sample: prompt must be [batch, prompt_len >= 1] int ids, got shape "
                     f"{tuple(prompt.shape)}.")
  if max_new_tokens < 1:
    raise ValueError(f"sample: max_new_tokens must be >= 1, got {max_new_tokens}.")
  fn = _sampler(model.clone(decode=True, dropout_rate=0.0), prompt.shape, max_new_tokens,
                float(temperature), int(top_k), float(top_p))
  return fn(params, prompt.astype(jnp.int32), key)


def _sampler(model, shape, steps, temperature, top_k, top_p):
  b, p = shape
  total = p + steps

  def pick(logits, key):
    if temperature == 0:
      return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, filter_logits(logits, temperature, top_k, top_p)
                                  ).astype(jnp.int32)

  @jax.jit
  def run(params, prompt, key):
    cache = model.init(jax.random.key(0), jnp.zeros((b, total), jnp.int32))["cache"]
    positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
    logits, upd = model.apply({"params": params, "cache": cache}, prompt, positions,
                              mutable=["cache"])
    last = logits[:, -1]

    def step(carry, i):
      cache, last, key = carry
      key, sub = jax.random.split(key)
      tok = pick(last, sub)
      pos = jnp.full((b, 1), p + i, jnp.int32)
      out, upd = model.apply({"params": params, "cache": cache}, tok[:, None], pos,
                             mutable=["cache"])
      return (upd["cache"], out[:, -1], key), (tok, last)

    _, (toks, used) = jax.lax.scan(step, (upd["cache"], last, key), jnp.arange(steps))
    tokens = jnp.concatenate([prompt, toks.T], axis=1)
    return Samples(tokens, jnp.swapaxes(used, 0, 1))

  return run
