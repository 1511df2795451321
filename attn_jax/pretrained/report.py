"""What a checkpoint import did, and the one error type of this package."""
from __future__ import annotations

import dataclasses


class CheckpointFormatError(ValueError):
  """A checkpoint that cannot be read or converted: unknown layout, truncated file, missing
  keys, or a shape that cannot become the model's. The message names the key (and shapes)."""


def shape_str(shape) -> str:
  """(1, 197, 192) -> '[1, 197, 192]'."""
  return "[" + ", ".join(str(int(n)) for n in shape) + "]"


@dataclasses.dataclass
class LoadReport:
  """The outcome of `attn_jax.pretrained.load`.

  Attributes:
    path: the checkpoint file.
    layout: what it held, e.g. 'timm ViT', 'big_vision ViT', 'vision_transformer ViT',
      'timm Swin', 'Microsoft Swin'.
    loaded: model parameter path -> the checkpoint key it came from (copied or
      transposed / split / reshaped, values unchanged).
    resampled: model parameter path -> how ('[1, 197, 192] -> [1, 577, 192] bilinear').
    initialised: model parameter path -> why it is freshly initialised (a new head).
    unused: checkpoint key -> why it was not used (buffers, a dropped head, optimizer state).
    notes: anything else worth knowing (e.g. an activation that differs from the one the
      checkpoint was trained with).
  """
  path: str
  layout: str
  loaded: dict[str, str] = dataclasses.field(default_factory=dict)
  resampled: dict[str, str] = dataclasses.field(default_factory=dict)
  initialised: dict[str, str] = dataclasses.field(default_factory=dict)
  unused: dict[str, str] = dataclasses.field(default_factory=dict)
  notes: list[str] = dataclasses.field(default_factory=list)

  def __str__(self) -> str:
    lines = [f"{self.path}: {self.layout} checkpoint; {len(self.loaded)} parameters loaded, "
             f"{len(self.resampled)} resampled, {len(self.initialised)} newly initialised, "
             f"{len(self.unused)} checkpoint entries unused."]
    for title, items in (("resampled", self.resampled), ("newly initialised", self.initialised),
                         ("unused", self.unused)):
      if items:
        lines.append(f"  {title}:")
        lines += _listing(items)
    lines += [f"  note: {n}" for n in self.notes]
    return "\n".join(lines)


def _listing(items: dict[str, str], limit: int = 12) -> list[str]:
  """'    key: why' lines; keys with the same reason beyond `limit` are counted, not listed."""
  out = [f"    {k}: {v}" for k, v in list(items.items())[:limit]]
  if len(items) > limit:
    reasons = sorted({v for v in list(items.values())[limit:]})
    out.append(f"    ... and {len(items) - limit} more ({'; '.join(reasons)[:200]})")
  return out
