"""Checkpoints with the real key names and shapes of each format, generated at tiny widths
(random values): timm ViT and Swin state dicts, their vision_transformer / big_vision and
Microsoft counterparts."""
import numpy as np


def timm_vit(seed=0, width=8, depth=2, mlp=16, patch=4, grid=4, channels=3, classes=5,
             cls=True, fc_norm=False):
  """A timm VisionTransformer state dict (random values, timm's names and shapes)."""
  rng = np.random.default_rng(seed)
  r = lambda *s: rng.normal(0, 0.3, s).astype(np.float32)
  sd = {"patch_embed.proj.weight": r(width, channels, patch, patch),
        "patch_embed.proj.bias": r(width), "pos_embed": r(1, grid * grid + cls, width)}
  if cls:
    sd["cls_token"] = r(1, 1, width)
  for i in range(depth):
    b = f"blocks.{i}."
    for n in ("norm1", "norm2"):
      sd[b + n + ".weight"], sd[b + n + ".bias"] = 1 + r(width), r(width)
    sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"] = r(3 * width, width), r(3 * width)
    sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"] = r(width, width), r(width)
    sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"] = r(mlp, width), r(mlp)
    sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"] = r(width, mlp), r(width)
  norm = "fc_norm" if fc_norm else "norm"
  sd[norm + ".weight"], sd[norm + ".bias"] = 1 + r(width), r(width)
  sd["head.weight"], sd["head.bias"] = r(classes, width), r(classes)
  return sd


def google_from_timm(sd, heads, style="vision_transformer", scanned=False):
  """The same weights as a vision_transformer / big_vision `.npz` dict (the inverse of timm's
  `_load_weights`: kernels [in, out], attention kernels [D, heads, head_dim])."""
  d = sd["patch_embed.proj.weight"].shape[0]
  hd = d // heads
  pre = "params/" if style == "big_vision" else ""
  out = {pre + "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
         pre + "embedding/bias": sd["patch_embed.proj.bias"]}
  if "cls_token" in sd:
    out[pre + "cls"] = sd["cls_token"]
  if style == "big_vision":   # no class-token row: the class token gets no position embedding
    out[pre + "pos_embedding"] = sd["pos_embed"][:, 1:] if "cls_token" in sd else sd["pos_embed"]
  else:
    out["Transformer/posembed_input/pos_embedding"] = sd["pos_embed"]
  mha, ln2, mlp = (("MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3")
                   if style == "vision_transformer" else
                   ("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0"))
  blocks = []
  for i in range(sum(k.endswith("norm1.weight") for k in sd)):
    b = f"blocks.{i}."
    qkv_w, qkv_b = sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]
    blk = {"LayerNorm_0/scale": sd[b + "norm1.weight"], "LayerNorm_0/bias": sd[b + "norm1.bias"],
           f"{ln2}/scale": sd[b + "norm2.weight"], f"{ln2}/bias": sd[b + "norm2.bias"],
           f"{mha}/out/kernel": sd[b + "attn.proj.weight"].reshape(d, heads, hd).transpose(1, 2, 0),
           f"{mha}/out/bias": sd[b + "attn.proj.bias"],
           f"{mlp}/Dense_0/kernel": sd[b + "mlp.fc1.weight"].T,
           f"{mlp}/Dense_0/bias": sd[b + "mlp.fc1.bias"],
           f"{mlp}/Dense_1/kernel": sd[b + "mlp.fc2.weight"].T,
           f"{mlp}/Dense_1/bias": sd[b + "mlp.fc2.bias"]}
    for j, n in enumerate(("query", "key", "value")):
      blk[f"{mha}/{n}/kernel"] = qkv_w[j * d:(j + 1) * d].T.reshape(d, heads, hd)
      blk[f"{mha}/{n}/bias"] = qkv_b[j * d:(j + 1) * d].reshape(heads, hd)
    blocks.append(blk)
  if scanned:
    out.update({f"{pre}Transformer/encoderblock/{k}": np.stack([b[k] for b in blocks])
                for k in blocks[0]})
  else:
    out.update({f"{pre}Transformer/encoderblock_{i}/{k}": v for i, b in enumerate(blocks)
                for k, v in b.items()})
  out[pre + "Transformer/encoder_norm/scale"] = sd["norm.weight"]
  out[pre + "Transformer/encoder_norm/bias"] = sd["norm.bias"]
  out[pre + "head/kernel"], out[pre + "head/bias"] = sd["head.weight"].T, sd["head.bias"]
  return out


def rel_index(m):
  """timm's `get_relative_position_index` for an m x m window."""
  coords = np.stack(np.meshgrid(np.arange(m), np.arange(m), indexing="ij")).reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + m - 1
  return rel[..., 0] * (2 * m - 1) + rel[..., 1]


def swin_state(seed=0, width=8, depth=(2, 2), heads=(1, 2), window=4, patch=2, classes=5,
               layout="timm"):
  """A timm (downsample at the start of a stage, `head.fc`) or Microsoft (downsample at the
  end, `head`, index / mask buffers) Swin state dict."""
  rng = np.random.default_rng(seed)
  r = lambda *s: rng.normal(0, 0.3, s).astype(np.float32)
  sd = {"patch_embed.proj.weight": r(width, 3, patch, patch), "patch_embed.proj.bias": r(width),
        "patch_embed.norm.weight": 1 + r(width), "patch_embed.norm.bias": r(width)}
  c = width
  for s, (n, h) in enumerate(zip(depth, heads)):
    for b in range(n):
      k = f"layers.{s}.blocks.{b}."
      for nm in ("norm1", "norm2"):
        sd[k + nm + ".weight"], sd[k + nm + ".bias"] = 1 + r(c), r(c)
      sd[k + "attn.relative_position_bias_table"] = r((2 * window - 1) ** 2, h)
      sd[k + "attn.qkv.weight"], sd[k + "attn.qkv.bias"] = r(3 * c, c), r(3 * c)
      sd[k + "attn.proj.weight"], sd[k + "attn.proj.bias"] = r(c, c), r(c)
      sd[k + "mlp.fc1.weight"], sd[k + "mlp.fc1.bias"] = r(4 * c, c), r(4 * c)
      sd[k + "mlp.fc2.weight"], sd[k + "mlp.fc2.bias"] = r(c, 4 * c), r(c)
      if layout == "microsoft":
        sd[k + "attn.relative_position_index"] = rel_index(window)
        if b % 2:
          sd[k + "attn_mask"] = np.zeros((4, window ** 2, window ** 2), np.float32)
    if s < len(depth) - 1:
      k = f"layers.{s + 1 if layout == 'timm' else s}.downsample."
      sd[k + "norm.weight"], sd[k + "norm.bias"] = 1 + r(4 * c), r(4 * c)
      sd[k + "reduction.weight"] = r(2 * c, 4 * c)
      c *= 2
  sd["norm.weight"], sd["norm.bias"] = 1 + r(c), r(c)
  head = "head.fc" if layout == "timm" else "head"
  sd[head + ".weight"], sd[head + ".bias"] = r(classes, c), r(classes)
  return sd
