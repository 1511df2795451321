"""AutoAugment / RandAugment ops against direct NumPy definitions, and as a pipeline step."""
import numpy as np
import pytest

from attn_jax.data import autoaugment as A
from attn_jax.data import pipeline as P


def _img(c=3, seed=0, h=12, w=10):
  return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("op", A.RAND_OPS + ("Invert",))
def test_every_op_keeps_shape_dtype_and_level0_of_signed_ops_is_identity(op, c):
  img = _img(c)
  out = A.apply_op(img, op, 7.0, -1.0)
  assert out.shape == img.shape and out.dtype == np.uint8
  if op in ("Identity", "Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "Color",
            "Contrast", "Brightness", "Sharpness", "Posterize", "Solarize"):
    np.testing.assert_array_equal(A.apply_op(img, op, 0.0), img)


def test_pixel_ops_match_their_definitions():
  img = _img()
  np.testing.assert_array_equal(A.apply_op(img, "Invert", 5), 255 - img)
  sol = A.apply_op(img, "Solarize", 5)           # threshold 256 - 128 = 128
  np.testing.assert_array_equal(sol, np.where(img >= 128, 255 - img, img))
  post = A.apply_op(img, "Posterize", 10)        # 4 bits kept
  np.testing.assert_array_equal(post, img & 0xF0)
  dark = A.apply_op(img, "Brightness", 10, -1.0).astype(int)   # factor 0.1
  assert np.abs(dark - np.round(img * 0.1)).max() <= 1


def test_translate_moves_content_by_whole_pixels_and_fills_zero():
  img = _img(h=33, w=33)
  out = A.apply_op(img, "TranslateX", 10.0, 1.0)   # 150/331 * 33 = 14.95 -> 15 px
  np.testing.assert_array_equal(out[:, :33 - 15], img[:, 15:])
  assert (out[:, 33 - 15:] == 0).all()
  out = A.apply_op(img, "TranslateY", 10.0, -1.0)
  np.testing.assert_array_equal(out[15:], img[:33 - 15])
  assert (out[:15] == 0).all()


def test_policies_are_reproducible_from_the_rng_and_change_images():
  img = _img()
  for spec in ("autoaugment", "randaugment-n2-m9"):
    f = A.policy_transform(spec)
    a = [f(img, np.random.default_rng(s)) for s in range(20)]
    b = [f(img, np.random.default_rng(s)) for s in range(20)]
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x, y)
    assert sum(not np.array_equal(x, img) for x in a) >= 10
  assert A.policy_transform("") is None
  assert len(A.CIFAR10_POLICY) == 25
  for bad in ("autoaug", "randaugment-n2-m11", "randaugment-2-9"):
    with pytest.raises(ValueError, match="augment_policy"):
      A.policy_transform(bad)


def test_policy_runs_in_the_train_preprocess_only():
  ex = {"image": _img(), "label": 3}
  train = P.image_preprocess([0.5] * 3, [0.5] * 3, crop_padding=2, flip=True,
                             policy="randaugment-n2-m9")
  plain = P.image_preprocess([0.5] * 3, [0.5] * 3, policy="randaugment-n2-m9", train=False)
  out = train(ex, np.random.default_rng(0))
  assert out["image"].shape == (12, 10, 3) and out["image"].dtype == np.float32
  np.testing.assert_allclose(plain(ex)["image"], (ex["image"] / 255 - 0.5) / 0.5, atol=1e-6)


def test_config_names_a_bad_policy():
  from attn_jax.train.config import ConfigError, base_config, validate
  c = base_config()
  c.data.augment_policy = "randaugment"
  with pytest.raises(ConfigError, match="config.data.augment_policy"):
    validate(c)


def test_batch_augment_takes_crop_and_flip_only():
  from attn_jax.train.config import ConfigError, base_config, validate
  c = base_config()
  c.data.batch_augment, c.data.crop_padding, c.data.flip = True, 4, True
  validate(c)
  for key, value in (("augment_policy", "autoaugment"), ("rotate", 10.0), ("canvas", 40)):
    c2 = base_config()
    c2.data.batch_augment = True
    c2.data[key] = value
    with pytest.raises(ConfigError, match=r"config.data.batch_augment=True draws crop \+ flip only"):
      validate(c2)
