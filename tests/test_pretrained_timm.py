"""Imported checkpoints compute what PyTorch computes: timm's own ViT-Ti/16 and Swin-T (when
timm imports), and, always with torch, small PyTorch re-implementations with timm's and the
official Swin code's module names (so their state dicts have the real keys)."""
import functools

import jax
import numpy as np
import pytest

from attn_jax import pretrained as P
from reference import rel_err

torch = pytest.importorskip("torch")
nn = torch.nn


def _randomize(module, seed=0):
  torch.manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.normal_(0.0, 0.3)
  return module.eval()


def _save_both(tmp_path, name, module, wrap=False):
  """The state dict as .pth (torch.save; under 'model' with `wrap`, as the official Swin
  releases are) and .safetensors (this package's NumPy writer)."""
  sd = module.state_dict()
  pth, st = str(tmp_path / f"{name}.pth"), str(tmp_path / f"{name}.safetensors")
  torch.save({"model": sd} if wrap else sd, pth)
  P.write_safetensors(st, {k: v.detach().numpy() for k, v in sd.items()})
  return pth, st


@functools.partial(jax.jit, static_argnums=0)
def apply(model, params, images):
  return model.apply({"params": params}, images)


def _check(module, paths, images, image_size=None, tol=1e-4, **overrides):
  """Every file loads to the same params, whose logits match the module's."""
  with torch.no_grad():
    ref = module(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  loaded = []
  for path in paths:
    model = P.model_for(path, **overrides)   # a timm ViT file does not say its heads
    params, report = P.load(model, path, image_size=image_size)
    assert not report.initialised and not report.resampled
    loaded.append(jax.tree.leaves(params))
  for a, b in zip(*loaded):
    np.testing.assert_array_equal(a, b)
  out = apply(model, params, images)
  assert rel_err(out, ref) < tol


class Attention(nn.Module):
  """timm's `Attention` / Swin's `WindowAttention` core: fused qkv, optional additive bias."""

  def __init__(self, dim, heads):
    super().__init__()
    self.heads = heads
    self.qkv = nn.Linear(dim, 3 * dim)
    self.proj = nn.Linear(dim, dim)

  def attend(self, x, bias=None):
    b, n, c = x.shape
    q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
    a = q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5
    if bias is not None:
      a = a + bias
    return self.proj((a.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(nn.functional.gelu(self.fc1(x)))


class PatchEmbed(nn.Module):
  def __init__(self, dim, patch, norm=False):
    super().__init__()
    self.proj = nn.Conv2d(3, dim, patch, patch)
    if norm:
      self.norm = nn.LayerNorm(dim)


class VitBlock(nn.Module):
  def __init__(self, dim, heads, hidden):
    super().__init__()
    self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
    self.attn, self.mlp = Attention(dim, heads), Mlp(dim, hidden)

  def forward(self, x):
    x = x + self.attn.attend(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class TorchViT(nn.Module):
  """timm's VisionTransformer, 'token' or 'avg' pooling (fc_norm after the pool)."""

  def __init__(self, dim=16, depth=2, heads=2, hidden=32, patch=4, grid=4, classes=5, cls=True,
               fc_norm=False):
    super().__init__()
    self.patch_embed = PatchEmbed(dim, patch)
    self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cls else None
    self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + cls, dim))
    self.blocks = nn.ModuleList([VitBlock(dim, heads, hidden) for _ in range(depth)])
    self.use_fc_norm = fc_norm
    setattr(self, "fc_norm" if fc_norm else "norm", nn.LayerNorm(dim, eps=1e-6))
    self.head = nn.Linear(dim, classes)

  def forward(self, x):
    x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
    if self.cls_token is not None:
      x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1)
    x = x + self.pos_embed
    for blk in self.blocks:
      x = blk(x)
    if self.use_fc_norm:
      return self.head(self.fc_norm(x.mean(1)))
    x = self.norm(x)
    return self.head(x[:, 0] if self.cls_token is not None else x.mean(1))


def _windows(x, m):
  b, h, w, c = x.shape
  return x.view(b, h // m, m, w // m, m, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, m * m, c)


def _unwindows(win, m, h, w):
  b = win.shape[0] // ((h // m) * (w // m))
  return win.view(b, h // m, w // m, m, m, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, -1)


class WindowAttention(Attention):
  def __init__(self, dim, heads, window, persistent):
    super().__init__(dim, heads)
    self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window),
                                        indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + window - 1
    self.register_buffer("relative_position_index", rel[..., 0] * (2 * window - 1) + rel[..., 1],
                         persistent=persistent)


class SwinBlock(nn.Module):
  """The official block: roll by -shift, window attention with the -100 region mask, roll back."""

  def __init__(self, dim, heads, window, shift, res, persistent):
    super().__init__()
    if res <= window:
      window, shift = res, 0
    self.window, self.shift = window, shift
    self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
    self.attn, self.mlp = WindowAttention(dim, heads, window, persistent), Mlp(dim, 4 * dim)
    mask = None
    if shift:
      img = torch.zeros(1, res, res, 1)
      cnt = 0
      for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
          img[:, hs, ws, :] = cnt
          cnt += 1
      mw = _windows(img, window).squeeze(-1)
      mask = (mw[:, None, :] - mw[:, :, None]).ne(0).float() * -100.0
    self.register_buffer("attn_mask", mask, persistent=persistent)

  def forward(self, x):
    b, h, w, c = x.shape
    m, s, a = self.window, self.shift, self.attn
    y = torch.roll(self.norm1(x), (-s, -s), (1, 2)) if s else self.norm1(x)
    bias = a.relative_position_bias_table[a.relative_position_index.view(-1)]
    bias = bias.view(m * m, m * m, -1).permute(2, 0, 1)[None]
    win = _windows(y, m)
    if self.attn_mask is not None:
      nw = self.attn_mask.shape[0]
      bias = (bias + self.attn_mask[:, None]).repeat(win.shape[0] // nw, 1, 1, 1)
    y = _unwindows(a.attend(win, bias), m, h, w)
    x = x + (torch.roll(y, (s, s), (1, 2)) if s else y)
    return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
  def __init__(self, dim):
    super().__init__()
    self.norm, self.reduction = nn.LayerNorm(4 * dim), nn.Linear(4 * dim, 2 * dim, bias=False)

  def forward(self, x):
    x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
    return self.reduction(self.norm(x))


class Stage(nn.Module):
  def __init__(self, blocks, downsample, first):
    super().__init__()
    self.blocks, self.first = nn.ModuleList(blocks), first
    if downsample is not None:
      self.downsample = downsample

  def forward(self, x):
    down = getattr(self, "downsample", None)
    if down is not None and self.first:
      x = down(x)
    for blk in self.blocks:
      x = blk(x)
    return down(x) if down is not None and not self.first else x


class TorchSwin(nn.Module):
  """timm >= 0.9 (`layout='timm'`: downsample first in stages 1.., `head.fc`, no buffers in
  the state dict) or the official code (downsample last in stages ..-2, `head`, buffers)."""

  def __init__(self, dim=8, depth=(2, 2), heads=(1, 2), window=4, patch=2, image=32, classes=5,
               layout="timm"):
    super().__init__()
    self.patch_embed = PatchEmbed(dim, patch, norm=True)
    ms, res, stages = layout != "timm", image // patch, []
    for s, (n, h) in enumerate(zip(depth, heads)):
      if not ms and s > 0:
        dim, res = dim * 2, res // 2
      blocks = [SwinBlock(dim, h, window, 0 if b % 2 == 0 else window // 2, res, ms)
                for b in range(n)]
      if ms:
        down = PatchMerging(dim) if s < len(depth) - 1 else None
        stages.append(Stage(blocks, down, first=False))
        if down is not None:
          dim, res = dim * 2, res // 2
      else:
        stages.append(Stage(blocks, PatchMerging(dim // 2) if s > 0 else None, first=True))
    self.layers = nn.ModuleList(stages)
    self.norm = nn.LayerNorm(dim)
    if ms:
      self.head = nn.Linear(dim, classes)
    else:
      self.head = nn.Module()
      self.head.fc = nn.Linear(dim, classes)

  def forward(self, x):
    x = self.patch_embed.norm(self.patch_embed.proj(x).permute(0, 2, 3, 1))
    for stage in self.layers:
      x = stage(x)
    x = self.norm(x).mean((1, 2))
    return self.head(x) if isinstance(self.head, nn.Linear) else self.head.fc(x)


@pytest.mark.parametrize("cls,fc_norm", [(True, False), (False, True), (False, False)])
def test_vit_matches_a_torch_vit(tmp_path, cls, fc_norm):
  module = _randomize(TorchViT(cls=cls, fc_norm=fc_norm))
  images = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
  paths = _save_both(tmp_path, "vit", module)
  _check(module, paths, images, num_heads=2)
  model = P.model_for(paths[1], num_heads=2)      # and back out as a .pth for torch
  P.export_timm(model, P.load(model, paths[1])[0], str(tmp_path / "back.pth"))
  again = TorchViT(cls=cls, fc_norm=fc_norm).eval()
  again.load_state_dict(torch.load(str(tmp_path / "back.pth")), strict=True)
  x = torch.from_numpy(images.transpose(0, 3, 1, 2))
  with torch.no_grad():
    assert torch.equal(again(x), module(x))


@pytest.mark.parametrize("layout", ["timm", "microsoft"])
def test_swin_matches_a_torch_swin(tmp_path, layout):
  module = _randomize(TorchSwin(layout=layout))
  assert any(k.endswith("attn_mask") for k in module.state_dict()) == (layout == "microsoft")
  images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  paths = _save_both(tmp_path, "swin", module, wrap=layout == "microsoft")
  _check(module, paths, images, image_size=32)


def _timm():
  try:
    import timm
  except Exception as e:   # not installed, or its torchvision does not load on this torch
    pytest.skip(f"timm is not usable here: {type(e).__name__}: {e}")
  return timm


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "swin_tiny_patch4_window7_224"])
def test_timm_models_and_export_back(tmp_path, name):
  timm = _timm()
  module = timm.create_model(name, pretrained=False).eval()
  with torch.no_grad():
    for p in module.parameters():
      p.add_(torch.randn_like(p) * 0.05)
  images = np.random.default_rng(0).normal(size=(1, 224, 224, 3)).astype(np.float32)
  paths = _save_both(tmp_path, name, module)
  _check(module, paths, images)
  model = P.model_for(paths[1])
  params, _ = P.load(model, paths[1])
  P.export_timm(model, params, str(tmp_path / "back.safetensors"))
  again = timm.create_model(name, pretrained=False).eval()
  back, _ = P.read_safetensors(str(tmp_path / "back.safetensors"))
  again.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in back.items()}, strict=True)
  x = torch.from_numpy(images.transpose(0, 3, 1, 2))
  with torch.no_grad():
    assert torch.equal(again(x), module(x))
