"""Fast attention backends behind `attention(..., implementation=...)` and their selection.

| implementation | what | when `implementation=None` picks it |
|---|---|---|
| 'reference' | the three stages in jnp (any scorer, dropout, weights) | custom `score_fn`, dropout, `return_weights`; CPU below the blockwise threshold |
| 'blockwise' | `blockwise.blockwise_attention`, O(N) memory, custom VJP | CPU from `CPU_BLOCKWISE_MIN_SCORES` score entries per head |
| 'xla' | `jax.nn.dot_product_attention(implementation='xla')` | TPU; GPU when cuDNN's constraints fail |
| 'cudnn' | `jax.nn.dot_product_attention(implementation='cudnn')` | GPU when `cudnn_supported` holds |

Every path gives rows with no valid key an all-zero output, as the reference does.
All paths take our layout `[..., len, d]`; leading axes are flattened into jax.nn's batch.

Variants: grouped K/V heads go to jax.nn as its own GQA (N query heads, K K/V heads);
a sliding window as `local_window_size` when q_len == kv_len (cuDNN: causal windows
only), else as a mask. Segment ids, soft-capping and ALiBi have no cuDNN form in
`jax.nn.dot_product_attention`, so `select_implementation` sends them to 'blockwise'
(from `CPU_BLOCKWISE_MIN_SCORES` scores, on every backend) or 'reference'.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from attn_jax.functional import _variants as V
from attn_jax.functional import masks as M

# CPU: from this many score entries per (batch, head) (q_len * kv_len) the blockwise
# kernel runs. A sequence that fits one tile costs what the dense path does forward
# (the same fused ops) and its custom backward beats autodiff through the dense softmax
# (experiments/bench_attention.py with `--peers default,blockwise,reference,...`).
# Below it the reference path keeps forward-mode autodiff (jvp) for small problems.
CPU_BLOCKWISE_MIN_SCORES = 256 * 256
# cuDNN flash attention (jax 0.10 checks): fp16/bf16, head dim a multiple of 8 and
# <= 128 (256 on Hopper; we stay conservative), equal q/k and v head dims (MLA needs
# Hopper + cuDNN 9.10), even lengths when a bias (or a mask, which becomes a bias) is trained.
CUDNN_DTYPES = (jnp.float16, jnp.bfloat16)
CUDNN_MAX_HEAD_DIM = 128


def cudnn_supported(q, k, v, *, mask=None, bias=None, window=None, is_causal: bool = False,
                    backend: str | None = None) -> bool:
  """Whether `jax.nn.dot_product_attention(implementation='cudnn')` accepts this request.

  Args:
    q: [..., heads, q_len, d_k] queries (an array or a ShapeDtypeStruct).
    k: [..., kv_heads, kv_len, d_k] keys; kv_heads may divide heads (GQA).
    v: [..., kv_heads, kv_len, d_v] values.
    mask: as in `attention`; only its presence matters (odd lengths then fail).
    bias: as in `attention`; only its presence matters, as for mask.
    window: as in `attention`; cuDNN takes a window only as a causal band (right = 0)
      with q_len == kv_len.
    is_causal: as in `attention` (turns a window into a causal band).
    backend: 'gpu', 'cpu', 'tpu' (default: jax's default backend).

  Returns:
    True on a GPU for one fp16/bf16 dtype shared by q, k, v, d_v == d_k, d_k a multiple
    of 8 and <= `CUDNN_MAX_HEAD_DIM`, even q_len and kv_len when a mask or bias is
    given, and a window cuDNN accepts; else False.
  """
  backend = backend or jax.default_backend()
  dtypes = {jnp.dtype(x.dtype) for x in (q, k, v)}
  d = q.shape[-1]
  even = q.shape[-2] % 2 == 0 and k.shape[-2] % 2 == 0
  w = V.check_window("cudnn_supported", window)
  band = V.band(w, is_causal)
  window_ok = w is None or (band[1] == 0 and q.shape[-2] == k.shape[-2])
  return (backend == "gpu" and len(dtypes) == 1 and dtypes.pop() in map(jnp.dtype, CUDNN_DTYPES)
          and v.shape[-1] == d and d % 8 == 0 and d <= CUDNN_MAX_HEAD_DIM
          and (even or (mask is None and bias is None)) and window_ok)


def select_implementation(q, k, v, *, custom_scorer: bool = False, dropout_rate: float = 0.0,
                          return_weights: bool = False, mask=None, bias=None, window=None,
                          is_causal: bool = False, softcap: float | None = None,
                          alibi: bool = False, segment_ids: bool = False,
                          backend: str | None = None) -> str:
  """The implementation `attention(implementation=None)` runs for this request.

  Custom scorers, dropout and returned weights need the reference path; soft-capping,
  ALiBi and segment ids (`alibi`, `segment_ids`: whether given) run 'blockwise' from
  `CPU_BLOCKWISE_MIN_SCORES` score entries per head on every backend (else 'reference');
  otherwise GPU -> 'cudnn' where `cudnn_supported` (else 'xla'), TPU -> 'xla' (GPU/TPU
  with d_v != d_k -> 'reference', which jax.nn does not support), CPU -> 'blockwise' from
  `CPU_BLOCKWISE_MIN_SCORES` score entries per head (else 'reference').

  Args:
    q: [..., heads, q_len, d_k] queries (an array or a ShapeDtypeStruct).
    k: [..., kv_heads, kv_len, d_k] keys.
    v: [..., kv_heads, kv_len, d_v] values.
    custom_scorer: whether `attention` got a `score_fn`.
    dropout_rate: dropout on the weights (> 0 needs 'reference').
    return_weights: whether the weights are returned (needs 'reference').
    mask: as in `attention` (only its presence matters, for `cudnn_supported`).
    bias: as in `attention` (only its presence matters).
    window: a validated (left, right) window or None (for `cudnn_supported`).
    is_causal: as in `attention`.
    softcap: the soft-cap value or None (only whether it is given matters).
    alibi: whether ALiBi slopes are given.
    segment_ids: whether segment ids are given.
    backend: 'gpu', 'cpu', 'tpu' (default: jax's default backend).

  Returns:
    'reference', 'blockwise', 'xla' or 'cudnn'.
  """
  if custom_scorer or dropout_rate > 0.0 or return_weights:
    return "reference"
  long = q.shape[-2] * k.shape[-2] >= CPU_BLOCKWISE_MIN_SCORES
  if softcap is not None or alibi or segment_ids:
    return "blockwise" if long else "reference"
  backend = backend or jax.default_backend()
  if backend in ("gpu", "tpu") and v.shape[-1] != q.shape[-1]:
    return "reference"  # jax.nn.dot_product_attention needs d_v == d_k
  if backend == "gpu":
    return "cudnn" if cudnn_supported(q, k, v, mask=mask, bias=bias, window=window,
                                      is_causal=is_causal, backend=backend) else "xla"
  if backend == "tpu":
    return "xla"
  return "blockwise" if long else "reference"


def xla_attention(q, k, v, shape, *, scale=None, mask=None, bias=None, valid_lens=None,
                  is_causal=False, window=None, groups: int = 1, implementation: str = "xla"):
  """`jax.nn.dot_product_attention` on our layout.

  For 'cudnn', [batch] valid lengths go in as `key_value_seq_lengths` and a square
  causal mask as `is_causal` (cuDNN then skips the masked tiles); a square window as
  `local_window_size`; other masks are combined into one boolean mask, which jax turns
  into a cuDNN bias. Rows with no valid key output zeros, as on the reference path.
  No argument checks: `attention` validates them first.

  Args:
    q: [..., heads, q_len, d_k] queries (leading axes broadcast against `shape`).
    k: [..., kv_heads, kv_len, d_k] keys, kv_heads = heads / groups.
    v: [..., kv_heads, kv_len, d_v] values (jax.nn needs d_v == d_k).
    shape: the scores' shape: the leading axes (query heads last) + (q_len, kv_len).
    scale: score scale (default 1/sqrt(d_k)).
    mask: bool, broadcastable to `shape`; True = may attend.
    bias: additive, broadcastable to `shape`.
    valid_lens: [batch] or [batch, q_len] number of valid keys.
    is_causal: query i sees keys j <= i + kv_len - q_len (aligned at the end).
    window: a validated (left, right) window (`_variants.check_window`) or None.
    groups: query heads per K/V head (GQA; 1: one K/V head per query head).
    implementation: 'xla' or 'cudnn', passed to `jax.nn.dot_product_attention`.

  Returns:
    [*shape[:-2], q_len, d_v], in the dtype jax.nn gives (`attention` casts it to q's).
  """
  lead, (nq, nk) = shape[:-2], shape[-2:]
  zlead = V.kv_lead(lead, groups)
  kv_lens, causal_flag, local = None, False, None
  vl = None if valid_lens is None else jnp.asarray(valid_lens)
  if implementation == "cudnn" and vl is not None and vl.ndim == 1 and len(lead) >= 1:
    kv_lens = jnp.broadcast_to(vl.reshape((-1,) + (1,) * (len(zlead) - 1)), zlead)
    kv_lens = kv_lens.reshape(-1).astype(jnp.int32)
  elif vl is not None:
    mask = M.combine_masks(mask, M.valid_lens_mask(vl, shape, "attention"))
  band = V.band(window, is_causal)
  if window is not None and nq == nk and (implementation != "cudnn" or band[1] == 0):
    local = tuple(nk if w is None else w for w in band)  # jax's window: top-left aligned
    causal_flag = implementation == "cudnn"  # cuDNN's window is a causal band
  elif window is not None:
    mask = M.combine_masks(mask, M.window_mask(nq, nk, window, offset=nk - nq))
  if is_causal and implementation == "cudnn" and nq == nk:
    causal_flag = True
  elif is_causal and local is None:
    mask = M.combine_masks(mask, M.causal_mask(nq, nk, offset=nk - nq))

  def q_btnh(x):  # [..., heads, T, D] -> [Z, T, G, D]
    x = jnp.broadcast_to(x, lead + x.shape[-2:]).reshape((-1, groups) + x.shape[-2:])
    return jnp.swapaxes(x, 1, 2)

  def kv_btnh(x):  # [..., kv_heads, T, D] -> [Z, T, 1, D]
    return jnp.broadcast_to(x, zlead + x.shape[-2:]).reshape((-1,) + x.shape[-2:])[:, :, None]

  bnts = lambda x: None if x is None else jnp.broadcast_to(x, shape).reshape(
      (-1, groups) + shape[-2:])  # [..., Q, K] -> [Z, G, Q, K]
  out = jax.nn.dot_product_attention(
      q_btnh(q), kv_btnh(k), kv_btnh(v), bias=bnts(bias), mask=bnts(mask), scale=scale,
      is_causal=causal_flag, key_value_seq_lengths=kv_lens, local_window_size=local,
      implementation=implementation)
  keep = M.combine_masks(mask, None if kv_lens is None else M.valid_lens_mask(vl, shape))
  if keep is not None:  # rows with no valid key: 0, as on the reference path
    ok = jnp.broadcast_to(jnp.any(keep, axis=-1), lead + (nq,)).reshape(-1, groups, nq)
    out = jnp.where(jnp.swapaxes(ok, 1, 2)[..., None], out, jnp.zeros((), out.dtype))
  return jnp.swapaxes(out, 1, 2).reshape(lead + (nq, v.shape[-1]))
