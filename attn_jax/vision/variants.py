"""Named vision models from one string, for config-driven runners.

`vision_model('ViT-S/4', 10, image_size=32)`, `vision_model('Swin-T/p2w4', 10)`,
`vision_model('ResNet-18', 10, attention='cbam')`; extra keywords override attributes.
"""
from __future__ import annotations

import flax.linen as nn

from attn_jax.vision.resnet import ResNet
from attn_jax.vision.swin import swin_variant
from attn_jax.vision.vit import vit_variant

# name -> (stage_sizes, width); ResNet-20 is the CIFAR model (3 stages, 16 channels)
RESNET_SIZES = {
    "ResNet-18": ((2, 2, 2, 2), 64),
    "ResNet-34": ((3, 4, 6, 3), 64),
    "ResNet-20": ((3, 3, 3), 16),
}


def vision_model(name: str, num_classes: int, image_size: int | None = None,
                 **overrides) -> nn.Module:
  """A ViT ('ViT-B/16'), Swin ('Swin-T', 'Swin-T/p2w4') or ResNet ('ResNet-18') by name."""
  if name.startswith("ViT-"):
    return vit_variant(name, num_classes, image_size, **overrides)
  if name.startswith("Swin-"):
    return swin_variant(name, num_classes, **overrides)
  if name in RESNET_SIZES:
    stages, width = RESNET_SIZES[name]
    kw = dict(stage_sizes=stages, width=width)
    kw.update(overrides)
    return ResNet(num_classes, **kw)
  raise ValueError(f"vision_model(): unknown model {name!r}; expected 'ViT-<size>/<patch>', "
                   f"'Swin-<size>[/p<patch>w<window>]' or one of {sorted(RESNET_SIZES)}.")
