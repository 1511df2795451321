"""Pure vision functions: patches, Swin windows / masks / relative positions, STN sampling."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax import functional as F


def _rand(shape, seed=0):
  return np.random.RandomState(seed).randn(*shape).astype(np.float32)


# ---------------------------------------------------------------- patches

def test_patches_roundtrip_and_layout():
  img = _rand((2, 12, 8, 3))
  p = F.image_to_patches(img, 4)
  assert p.shape == (2, 3 * 2, 4 * 4 * 3)
  # patch (row 1, col 0) is pixels [4:8, 0:4] flattened in (row, col, channel) order
  np.testing.assert_array_equal(p[:, 2], img[:, 4:8, 0:4].reshape(2, -1))
  np.testing.assert_array_equal(F.patches_to_image(p, 4, 12, 8), img)
  with pytest.raises(F.ShapeError, match="image_to_patches.*divisible by patch_size=5"):
    F.image_to_patches(img, 5)


def test_resample_grid_embeddings():
  pe = jnp.asarray(_rand((1, 16, 8)))
  assert F.resample_grid_embeddings(pe, (4, 4)) is pe                  # same grid: untouched
  up = F.resample_grid_embeddings(pe, (6, 8))
  assert up.shape == (1, 48, 8)
  const = jnp.ones((12, 5))
  np.testing.assert_allclose(F.resample_grid_embeddings(const, (5, 7), old_grid=(3, 4)), 1.0,
                             rtol=1e-6)
  with pytest.raises(F.ShapeError, match="old_grid"):
    F.resample_grid_embeddings(const, (5, 7), old_grid=(3, 3))


# ---------------------------------------------------------------- windows

@pytest.mark.parametrize("window,h,w", [(2, 4, 6), (3, 9, 6), (4, 8, 8), (7, 14, 7)])
def test_window_partition_reverse_identity(window, h, w):
  x = _rand((2, h, w, 5))
  win = F.window_partition(x, window)
  assert win.shape == (2, (h // window) * (w // window), window * window, 5)
  # window 1 (second in row-major order) holds pixels [0:M, M:2M] when w >= 2M
  if w >= 2 * window:
    np.testing.assert_array_equal(win[:, 1], x[:, :window, window:2 * window].reshape(2, -1, 5))
  np.testing.assert_array_equal(F.window_reverse(win, window, h, w), x)


def test_cyclic_shift_roundtrip_and_direction():
  x = _rand((2, 8, 6, 3))
  s = F.cyclic_shift(x, 2)
  np.testing.assert_array_equal(s[:, 0, 0], x[:, 2, 2])               # rolled up and left
  np.testing.assert_array_equal(F.reverse_cyclic_shift(s, 2), x)
  np.testing.assert_array_equal(F.cyclic_shift(F.reverse_cyclic_shift(x, 3), 3), x)


def _brute_force_shift_mask(h, w, m, s):
  """Token pairs in the same shifted window may attend iff they were within one window
  of each other before the shift (no wrap-around), built pair by pair."""
  nw = (h // m) * (w // m)
  out = np.zeros((nw, m * m, m * m), bool)
  for wi in range(nw):
    wy, wx = divmod(wi, w // m)
    toks = [(wy * m + a, wx * m + b) for a in range(m) for b in range(m)]  # shifted coords
    for (i, (yi, xi)), (j, (yj, xj)) in itertools.product(enumerate(toks), repeat=2):
      oyi, oxi, oyj, oxj = (yi + s) % h, (xi + s) % w, (yj + s) % h, (xj + s) % w
      out[wi, i, j] = abs(oyi - oyj) < m and abs(oxi - oxj) < m
  return out


@pytest.mark.parametrize("h,w,m,s", [(8, 8, 4, 2), (12, 8, 4, 2), (9, 9, 3, 1), (14, 14, 7, 3),
                                     (8, 8, 4, 0)])
def test_shifted_window_mask_matches_brute_force(h, w, m, s):
  mask = np.asarray(F.shifted_window_mask(h, w, m, s))
  ref = _brute_force_shift_mask(h, w, m, s)
  np.testing.assert_array_equal(mask, ref)
  if s > 0:
    assert not mask.all() and mask[0].all()   # only windows touching the wrap are masked


def test_window_padding_mask():
  mask = np.asarray(F.window_padding_mask(6, 5, 4))                   # padded to 8 x 8
  assert mask.shape == (4, 1, 16)
  valid = np.zeros((8, 8), bool)
  valid[:6, :5] = True
  np.testing.assert_array_equal(mask[:, 0], np.asarray(F.window_partition(
      valid[None, :, :, None], 4))[0, :, :, 0])
  shifted = np.asarray(F.window_padding_mask(6, 5, 4, shift=2))
  np.testing.assert_array_equal(shifted[:, 0], np.asarray(F.window_partition(
      np.roll(valid, (-2, -2), (0, 1))[None, :, :, None], 4))[0, :, :, 0])


@pytest.mark.parametrize("m", [1, 2, 4, 7])
def test_relative_position_index(m):
  idx = np.asarray(F.relative_position_index(m))
  assert idx.shape == (m * m, m * m)
  assert idx.min() == 0 and idx.max() == (2 * m - 1) ** 2 - 1
  assert len(np.unique(idx)) == (2 * m - 1) ** 2                      # every offset is used
  coords = [(a, b) for a in range(m) for b in range(m)]
  for i, j in itertools.product(range(m * m), repeat=2):
    dy, dx = coords[i][0] - coords[j][0], coords[i][1] - coords[j][1]
    assert idx[i, j] == (dy + m - 1) * (2 * m - 1) + dx + m - 1
  table = jnp.asarray(_rand(((2 * m - 1) ** 2, 3)))
  bias = F.relative_position_bias(table, m)
  assert bias.shape == (3, m * m, m * m)
  np.testing.assert_array_equal(bias[1], np.asarray(table)[idx, 1])


# ---------------------------------------------------------------- sampling

def test_affine_grid_identity_and_rotation():
  img = _rand((1, 6, 6, 2))
  theta = F.identity_theta(1)
  np.testing.assert_allclose(F.grid_sample(img, F.affine_grid(theta, img.shape)), img, atol=1e-6)
  rot = jnp.asarray([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]])           # 90 degrees
  out = F.grid_sample(img, F.affine_grid(rot, (6, 6)))
  np.testing.assert_allclose(out, np.rot90(img, k=1, axes=(1, 2)), atol=1e-6)
  assert not np.allclose(out, img, atol=1e-2)
  # a pure shift by more than the image reads only zeros (zero padding)
  far = jnp.asarray([[[1.0, 0.0, 2.5], [0.0, 1.0, 0.0]]])
  np.testing.assert_array_equal(F.grid_sample(img, F.affine_grid(far, (6, 6))), 0.0)


def test_affine_grid_and_grid_sample_match_torch():
  torch = pytest.importorskip("torch")
  tf = torch.nn.functional
  rs = np.random.RandomState(0)
  theta = (np.eye(2, 3)[None] + 0.6 * rs.randn(3, 2, 3)).astype(np.float32)
  img = _rand((3, 7, 9, 4), seed=1)
  grid = F.affine_grid(jnp.asarray(theta), (3, 5, 11, 4))
  tgrid = tf.affine_grid(torch.tensor(theta), (3, 4, 5, 11), align_corners=False)
  np.testing.assert_allclose(grid, tgrid.numpy(), atol=1e-5)
  out = F.grid_sample(jnp.asarray(img), grid)
  tout = tf.grid_sample(torch.tensor(img).permute(0, 3, 1, 2), tgrid, mode="bilinear",
                        padding_mode="zeros", align_corners=False).permute(0, 2, 3, 1)
  assert np.abs(np.asarray(grid)).max() > 1.0                         # some points fall outside
  np.testing.assert_allclose(out, tout.numpy(), atol=1e-5)

  # gradients with respect to theta (what trains an STN) match too
  def loss(t):
    return (F.grid_sample(jnp.asarray(img), F.affine_grid(t, (3, 5, 11, 4))) ** 2).sum()
  g = jax.grad(loss)(jnp.asarray(theta))
  tt = torch.tensor(theta, requires_grad=True)
  tl = (tf.grid_sample(torch.tensor(img).permute(0, 3, 1, 2),
                       tf.affine_grid(tt, (3, 4, 5, 11), align_corners=False),
                       align_corners=False) ** 2).sum()
  tl.backward()
  np.testing.assert_allclose(g, tt.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_sampling_shape_errors():
  with pytest.raises(F.ShapeError, match="affine_grid.*'theta'"):
    F.affine_grid(jnp.zeros((2, 3, 3)), (4, 4))
  with pytest.raises(F.ShapeError, match="grid_sample.*'grid'"):
    F.grid_sample(jnp.zeros((2, 4, 4, 1)), jnp.zeros((2, 4, 4, 3)))
