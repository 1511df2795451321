"""AutoAugment (CIFAR-10 policy) and RandAugment on uint8 images, as pipeline transforms.

`policy_transform(spec)` parses a config string and returns `f(image, rng) -> image`
(uint8 [h, w, c] in, same shape and dtype out, c in {1, 3}), drawn from the numpy
Generator the grain pipeline hands each example, so a run is reproducible:

  'autoaugment'       the learned CIFAR-10 policy of Cubuk et al., "AutoAugment: Learning
                      Augmentation Policies from Data" (2019): one of 25 sub-policies
                      per image, each two (op, probability, magnitude) steps.
  'randaugment-n2-m9' Cubuk et al., "RandAugment" (2020): n ops drawn uniformly, each at
                      magnitude m of 10 (m may be fractional), with a random sign.

The op set and magnitude ranges are the papers' (shear up to 0.3, translation up to
150/331 of the side, rotation up to 30 degrees, enhancement factors 1 +- 0.9, posterize
down to 4 bits, solarize threshold 256 -> 0), implemented with Pillow. Geometric ops fill
with 0, like the random-crop padding.
"""
from __future__ import annotations

import re
from typing import Callable

import numpy as np

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]

_MAX_LEVEL = 10.0

# (op, probability, magnitude level 0..9): Cubuk et al. 2019, appendix, the CIFAR-10 policy.
CIFAR10_POLICY: tuple[tuple[tuple[str, float, int], tuple[str, float, int]], ...] = (
    (("Invert", 0.1, 7), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, 8), ("Equalize", 0.9, 2)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, 5), ("Equalize", 0.5, 1)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, 7), ("AutoContrast", 0.4, 8)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, 3)),
    (("Equalize", 0.2, 0), ("AutoContrast", 0.6, 0)),
    (("Equalize", 0.2, 8), ("Equalize", 0.6, 4)),
    (("Color", 0.9, 9), ("Equalize", 0.6, 6)),
    (("AutoContrast", 0.8, 4), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, 3)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, 2), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, 8), ("Invert", 0.1, 3)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, 1)),
)

RAND_OPS = ("Identity", "AutoContrast", "Equalize", "Rotate", "Solarize", "Color", "Posterize",
            "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX",
            "TranslateY")


def _pil(img: np.ndarray):
  from PIL import Image
  return Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)


def _np(pil, channels: int) -> np.ndarray:
  out = np.asarray(pil, np.uint8)
  return out[..., None] if channels == 1 else out


def _affine(img, coeffs):
  from PIL import Image
  fill = 0 if img.mode == "L" else (0, 0, 0)
  return img.transform(img.size, Image.AFFINE, coeffs, resample=Image.NEAREST, fillcolor=fill)


def apply_op(img: np.ndarray, op: str, level: float, sign: float = 1.0) -> np.ndarray:
  """One op at magnitude `level` (0..10) on a uint8 [h, w, c] image; `sign` (+-1) is the
  direction of the signed ops (shear, translate, rotate, enhance). Returns uint8 [h, w, c]."""
  from PIL import ImageEnhance, ImageOps
  if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] not in (1, 3):
    raise ValueError(f"apply_op: image must be uint8 [h, w, 1 or 3], got {img.dtype} "
                     f"{tuple(img.shape)}.")
  frac = float(np.clip(level, 0, _MAX_LEVEL)) / _MAX_LEVEL
  h, w, c = img.shape
  pil = _pil(img)
  if op == "Identity":
    return img
  if op == "Invert":
    return 255 - img
  if op == "AutoContrast":
    out = ImageOps.autocontrast(pil)
  elif op == "Equalize":
    out = ImageOps.equalize(pil)
  elif op == "Solarize":            # invert pixels >= threshold; 256 (level 0) = no-op
    return np.where(img >= int(256 - 256 * frac), 255 - img, img).astype(np.uint8)
  elif op == "Posterize":           # keep 8 .. 4 bits
    bits = 8 - int(round(4 * frac))
    return (img & np.uint8((0xFF << (8 - bits)) & 0xFF)).astype(np.uint8)
  elif op in ("Color", "Contrast", "Brightness", "Sharpness"):
    factor = 1.0 + sign * 0.9 * frac
    out = getattr(ImageEnhance, op)(pil).enhance(factor)
  elif op == "Rotate":
    out = pil.rotate(sign * 30.0 * frac, fillcolor=0 if c == 1 else (0, 0, 0))
  elif op == "ShearX":
    out = _affine(pil, (1, sign * 0.3 * frac, 0, 0, 1, 0))
  elif op == "ShearY":
    out = _affine(pil, (1, 0, 0, sign * 0.3 * frac, 1, 0))
  elif op == "TranslateX":          # output x reads input x + dx: the content moves by -dx
    out = _affine(pil, (1, 0, round(sign * frac * w * 150 / 331), 0, 1, 0))
  elif op == "TranslateY":
    out = _affine(pil, (1, 0, 0, 0, 1, round(sign * frac * h * 150 / 331)))
  else:
    raise ValueError(f"apply_op: unknown op '{op}'; one of {sorted(set(RAND_OPS) | {'Invert'})}.")
  return _np(out, c)


def _sign(rng: np.random.Generator) -> float:
  return 1.0 if rng.random() < 0.5 else -1.0


def autoaugment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """The CIFAR-10 AutoAugment policy: one random sub-policy, each step with its probability."""
  for op, prob, level in CIFAR10_POLICY[rng.integers(len(CIFAR10_POLICY))]:
    if rng.random() < prob:
      img = apply_op(img, op, level * _MAX_LEVEL / 9, _sign(rng))   # levels 0..9 -> 0..10
  return img


def randaugment(n: int, m: float) -> Transform:
  """RandAugment with `n` ops per image at magnitude `m` (0..10)."""
  def f(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    for k in rng.integers(len(RAND_OPS), size=n):
      img = apply_op(img, RAND_OPS[k], m, _sign(rng))
    return img
  return f


def policy_transform(spec: str) -> Transform | None:
  """'' -> None; 'autoaugment' | 'randaugment-n<N>-m<M>' -> f(image, rng) -> image."""
  if not spec:
    return None
  if spec == "autoaugment":
    return autoaugment
  found = re.fullmatch(r"randaugment-n(\d+)-m(\d+(?:\.\d+)?)", spec)
  if found and float(found.group(2)) <= _MAX_LEVEL:
    return randaugment(int(found.group(1)), float(found.group(2)))
  raise ValueError(f"config.data.augment_policy must be '', 'autoaugment' or "
                   f"'randaugment-n<ops>-m<0..10>' (e.g. 'randaugment-n2-m9'), got '{spec}'.")
