"""Fast attention backends behind `attention(..., implementation=...)` and their selection.

| implementation | what | when `implementation=None` picks it |
|---|---|---|
| 'reference' | the three stages in jnp (any scorer, dropout, weights) | custom `score_fn`, dropout, `return_weights`; CPU below the blockwise threshold |
| 'blockwise' | `blockwise.blockwise_attention`, O(N) memory, custom VJP | CPU from `CPU_BLOCKWISE_MIN_SCORES` score entries per head |
| 'xla' | `jax.nn.dot_product_attention(implementation='xla')` | TPU; GPU when cuDNN's constraints fail |
| 'cudnn' | `jax.nn.dot_product_attention(implementation='cudnn')` | GPU when `cudnn_supported` holds |

Every path gives rows with no valid key an all-zero output, as the reference does.
All paths take our layout `[..., len, d]`; leading axes are flattened into jax.nn's batch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

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


def cudnn_supported(q, k, v, *, mask=None, bias=None, backend: str | None = None) -> bool:
  """Whether `jax.nn.dot_product_attention(implementation='cudnn')` accepts this request.

  Args:
    q: [..., q_len, d_k]; k: [..., kv_len, d_k]; v: [..., kv_len, d_v] (arrays or ShapeDtypeStructs).
    mask, bias: as in `attention` (only their presence matters).
    backend: 'gpu', 'cpu', 'tpu' (default: jax's default backend).
  """
  backend = backend or jax.default_backend()
  dtypes = {jnp.dtype(x.dtype) for x in (q, k, v)}
  d = q.shape[-1]
  even = q.shape[-2] % 2 == 0 and k.shape[-2] % 2 == 0
  return (backend == "gpu" and len(dtypes) == 1 and dtypes.pop() in map(jnp.dtype, CUDNN_DTYPES)
          and v.shape[-1] == d and d % 8 == 0 and d <= CUDNN_MAX_HEAD_DIM
          and (even or (mask is None and bias is None)))


def select_implementation(q, k, v, *, custom_scorer: bool = False, dropout_rate: float = 0.0,
                          return_weights: bool = False, mask=None, bias=None,
                          backend: str | None = None) -> str:
  """The implementation `attention(implementation=None)` runs for this request.

  Custom scorers, dropout and returned weights need the reference path; otherwise
  GPU -> 'cudnn' where `cudnn_supported` (else 'xla'), TPU -> 'xla' (GPU/TPU with
  d_v != d_k -> 'reference', which jax.nn does not support), CPU ->
  'blockwise' from `CPU_BLOCKWISE_MIN_SCORES` score entries per head (else 'reference').
  """
  if custom_scorer or dropout_rate > 0.0 or return_weights:
    return "reference"
  backend = backend or jax.default_backend()
  if backend in ("gpu", "tpu") and v.shape[-1] != q.shape[-1]:
    return "reference"  # jax.nn.dot_product_attention needs d_v == d_k
  if backend == "gpu":
    return "cudnn" if cudnn_supported(q, k, v, mask=mask, bias=bias, backend=backend) else "xla"
  if backend == "tpu":
    return "xla"
  return "blockwise" if q.shape[-2] * k.shape[-2] >= CPU_BLOCKWISE_MIN_SCORES else "reference"


def _to_btnh(x, lead):  # [..., T, D] -> [B, T, 1, D] with all leading axes flattened into B
  x = jnp.broadcast_to(x, lead + x.shape[-2:]).reshape((-1,) + x.shape[-2:])
  return x[:, :, None, :]


def _to_bnts(x, shape):  # [..., Q, K] -> [B, 1, Q, K]
  return None if x is None else jnp.broadcast_to(x, shape).reshape((-1, 1) + shape[-2:])


def xla_attention(q, k, v, shape, *, scale=None, mask=None, bias=None, valid_lens=None,
                  is_causal=False, implementation: str = "xla"):
  """`jax.nn.dot_product_attention` on our layout. `shape` = leading axes + (q_len, kv_len).

  For 'cudnn', [batch] valid lengths go in as `key_value_seq_lengths` and a square
  causal mask as `is_causal` (cuDNN then skips the masked tiles); other masks
  are combined into one boolean mask, which jax turns into a cuDNN bias.
  """
  lead, (nq, nk) = shape[:-2], shape[-2:]
  kv_lens, causal_flag = None, False
  vl = None if valid_lens is None else jnp.asarray(valid_lens)
  if implementation == "cudnn" and vl is not None and vl.ndim == 1 and len(lead) >= 1:
    kv_lens = jnp.broadcast_to(vl.reshape((-1,) + (1,) * (len(lead) - 1)), lead)
    kv_lens = kv_lens.reshape(-1).astype(jnp.int32)
  elif vl is not None:
    mask = M.combine_masks(mask, M.valid_lens_mask(vl, shape, "attention"))
  if is_causal and implementation == "cudnn" and nq == nk:
    causal_flag = True
  elif is_causal:
    mask = M.combine_masks(mask, M.causal_mask(nq, nk, offset=nk - nq))
  out = jax.nn.dot_product_attention(
      _to_btnh(q, lead), _to_btnh(k, lead), _to_btnh(v, lead), bias=_to_bnts(bias, shape),
      mask=_to_bnts(mask, shape), scale=scale, is_causal=causal_flag,
      key_value_seq_lengths=kv_lens, implementation=implementation)
  keep = M.combine_masks(mask, None if kv_lens is None else M.valid_lens_mask(vl, shape))
  if keep is not None:  # rows with no valid key: 0, as on the reference path
    ok = jnp.broadcast_to(jnp.any(keep, axis=-1), lead + (nq,)).reshape(-1, nq, 1, 1)
    out = jnp.where(ok, out, jnp.zeros((), out.dtype))
  return out[:, :, 0, :].reshape(lead + (nq, v.shape[-1]))
