"""Figures of what attention learned: numpy arrays in, a saved PNG path out.

Pure plotting (no models, no JAX): `experiments/visualize.py` restores a run, computes
the arrays and calls one of these. Every function draws on a bare
`matplotlib.figure.Figure` (no pyplot: headless, and a notebook's backend is left alone)
and returns the path it wrote.

  cross_attention_grid  decoder -> encoder attention of decoded sentences
  rollout_overlay       ViT attention rollout over the input images
  swin_windows          regular and shifted window partition + the shifted-window mask
  stn_warps             Spatial Transformer inputs next to their warped outputs
  gates_per_class       SE / ECA / CBAM channel gates averaged per class
"""
from __future__ import annotations

import math
import os
import textwrap
from typing import Sequence

import numpy as np

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "mnist": tuple(str(i) for i in range(10)),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"),
}


def class_name(label: int, class_names: Sequence[str] | None) -> str:
  """`class_names[label]` when there is one, else the number."""
  label = int(label)
  return class_names[label] if class_names is not None and label < len(class_names) else str(label)


def _figure(width: float, height: float, layout: str | None = None):
  from matplotlib.figure import Figure
  return Figure(figsize=(width, height), layout=layout)


def _save(fig, path: str, dpi: int = 100) -> str:
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  fig.savefig(path, dpi=dpi, bbox_inches="tight")
  return path


def _show_image(ax, image: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> None:
  """Draws [h, w, c] (c = 1 grey or 3 RGB) scaled from [vmin, vmax] (default its own range)."""
  img = np.asarray(image, np.float32)
  lo = float(img.min()) if vmin is None else vmin
  hi = float(img.max()) if vmax is None else vmax
  img = np.clip((img - lo) / max(hi - lo, 1e-8), 0.0, 1.0)
  if img.ndim == 3 and img.shape[-1] == 1:
    img = img[..., 0]
  ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0.0, vmax=1.0,
            interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks([])


def cross_attention_grid(items: Sequence[tuple[np.ndarray, Sequence[str], Sequence[str]]],
                         path: str, title: str, captions: Sequence[str] | None = None,
                         ncols: int = 2, vmax: float | None = None) -> str:
  """One heatmap per sentence: source tokens on x, output tokens on y.

  Args:
    items: (attention [tgt_len, src_len] (rows: output tokens, each a distribution over
      the source), src_tokens [src_len], tgt_tokens [tgt_len]) per sentence.
    path: PNG to write; title: figure title.
    captions: optional text under each panel's title (e.g. the reference translation).
    ncols: panels per row.
    vmax: top of the colour scale (default: the largest weight of all panels); the scale
      starts at 0 and is shared by all panels.

  Returns:
    `path`.
  """
  if not items:
    raise ValueError("cross_attention_grid(): argument 'items' is empty.")
  for k, (a, src, tgt) in enumerate(items):
    if np.ndim(a) != 2 or np.shape(a) != (len(tgt), len(src)):
      raise ValueError(f"cross_attention_grid(): items[{k}] has attention of shape {np.shape(a)}; "
                       f"expected [len(tgt_tokens)={len(tgt)}, len(src_tokens)={len(src)}].")
  ncols = max(1, min(ncols, len(items)))
  nrows = math.ceil(len(items) / ncols)
  cell_w = max(0.3 * max(len(s) for _, s, _ in items) + 1.6, 3.5)
  cell_h = max(0.3 * max(len(t) for _, _, t in items) + 1.8, 3.0)
  if vmax is None:
    vmax = max(float(np.max(a)) for a, _, _ in items) or 1.0
  fig = _figure(cell_w * ncols + 0.8, cell_h * nrows + 0.6, layout="constrained")
  axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).reshape(-1)
  im = None
  for k, ax in enumerate(axes):
    if k >= len(items):
      ax.axis("off")
      continue
    a, src, tgt = items[k]
    im = ax.imshow(np.asarray(a, np.float32), cmap="viridis", vmin=0.0, vmax=vmax,
                   aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(src)), list(src), rotation=90, fontsize=8)
    ax.set_yticks(range(len(tgt)), list(tgt), fontsize=8)
    ax.set_xlabel("source", fontsize=8)
    ax.set_ylabel("output", fontsize=8)
    if captions is not None and k < len(captions) and captions[k]:
      width = max(int(cell_w * 9), 20)
      ax.set_title("\n".join(textwrap.wrap(captions[k], width)[:3]), fontsize=7)
  fig.colorbar(im, ax=list(axes), shrink=0.6, label="attention")
  fig.suptitle(title, fontsize=10)
  return _save(fig, path)


def rollout_overlay(images: np.ndarray, rollout: np.ndarray, labels: Sequence[int], path: str,
                    class_names: Sequence[str] | None = None,
                    predictions: Sequence[int] | None = None, title: str | None = None) -> str:
  """Images (top row) and the same images with the attention rollout overlaid (bottom row).

  Args:
    images: [n, h, w, c] (any range; each image is scaled to its own min..max).
    rollout: [n, h, w] the rollout of the prediction token over the patches, already
      upsampled to the image size (each map is drawn from its own min (blue) to max (red)).
    labels: [n] true classes; predictions: optional [n] predicted classes.
    class_names: names for the labels; path: PNG to write; title: figure title.

  Returns:
    `path`.
  """
  images, rollout = np.asarray(images, np.float32), np.asarray(rollout, np.float32)
  if images.ndim != 4 or rollout.shape != images.shape[:3]:
    raise ValueError(f"rollout_overlay(): images {images.shape} must be [n, h, w, c] and rollout "
                     f"{rollout.shape} [n, h, w] of the same n, h, w.")
  n = images.shape[0]
  fig = _figure(1.6 * n + 0.4, 3.7)
  axes = fig.subplots(2, n, squeeze=False)
  for i in range(n):
    _show_image(axes[0, i], images[i])
    name = class_name(labels[i], class_names)
    if predictions is not None:
      name = f"{name}\npred {class_name(predictions[i], class_names)}"
    axes[0, i].set_title(name, fontsize=7)
    grey = images[i].mean(-1)
    axes[1, i].imshow((grey - grey.min()) / max(np.ptp(grey), 1e-8), cmap="gray",
                      interpolation="nearest")
    r = rollout[i] - rollout[i].min()
    axes[1, i].imshow(r / max(float(r.max()), 1e-8), cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0,
                      interpolation="nearest")
    axes[1, i].set_xticks([])
    axes[1, i].set_yticks([])
  axes[0, 0].set_ylabel("input", fontsize=8)
  axes[1, 0].set_ylabel("rollout", fontsize=8)
  fig.suptitle(title or "ViT attention rollout (class token -> patches)", fontsize=10)
  return _save(fig, path)


def _window_ids(gh: int, gw: int, window: int, shift: int) -> np.ndarray:
  """[gh, gw] index of the window each token falls in, after rolling the map by `shift`
  (row-major windows, as `F.window_partition`); shift 0 is the regular partition."""
  ys = ((np.arange(gh) - shift) % gh) // window
  xs = ((np.arange(gw) - shift) % gw) // window
  return ys[:, None] * (gw // window) + xs[None, :]


def _pick_windows(num_windows: int, per_row: int, most: int) -> list[int]:
  """All windows if few, else corner, right edge, bottom edge and the last (wrapped) one."""
  if num_windows <= most:
    return list(range(num_windows))
  picks = [0, per_row - 1, num_windows - per_row, num_windows - 1]
  return sorted(set(picks))[:most]


def swin_windows(image: np.ndarray | tuple[int, int], window: int, shift: int, mask: np.ndarray,
                 path: str, grid: tuple[int, int] | None = None, title: str | None = None,
                 max_windows: int = 4) -> str:
  """Swin's window partition for the regular (W-MSA) and the shifted (SW-MSA) layer, and
  the shifted-window attention mask of a few windows.

  Args:
    image: [h, w, c] (drawn under the windows) or the (rows, cols) token grid.
    window: window side M in tokens; shift: the shift s of the SW-MSA layer.
    mask: bool [num_windows, M * M, M * M] (`F.shifted_window_mask`; True = may attend).
    path: PNG to write.
    grid: (rows, cols) of tokens when `image` is an image; default: the square grid
      of `mask` (`M * sqrt(num_windows)` tokens a side).
    title: figure title; max_windows: mask panels.

  Returns:
    `path`. In the shifted panel, windows are coloured by their index after the cyclic
    shift: the pieces of a window that wrapped around share a colour, and the mask
    keeps those pieces from attending to each other. Below each mask, the window's
    M x M tokens coloured by region (tokens of one region may attend each other).
  """
  mask = np.asarray(mask, bool)
  t = window * window
  if mask.ndim != 3 or mask.shape[1:] != (t, t):
    raise ValueError(f"swin_windows(): mask {mask.shape} must be [num_windows, {t}, {t}] "
                     f"for window={window}.")
  nw = mask.shape[0]
  is_image = not (isinstance(image, (tuple, list)) and len(image) == 2)
  if not is_image:
    gh, gw = (int(v) for v in image)
  elif grid is not None:
    gh, gw = grid
  else:
    gh = gw = window * int(round(math.sqrt(nw)))
  if gh % window or gw % window or (gh // window) * (gw // window) != nw:
    raise ValueError(f"swin_windows(): a {gh}x{gw} token grid with window={window} has "
                     f"{(gh // window) * (gw // window)} windows, the mask {nw}.")
  if is_image:
    img = np.asarray(image, np.float32)
    py, px = img.shape[0] / gh, img.shape[1] / gw        # pixels per token
  else:
    img, py, px = None, 1.0, 1.0
  picks = _pick_windows(nw, gw // window, max_windows)
  from matplotlib import colormaps
  fig = _figure(3.2 * max(len(picks), 2), 10.0)
  gs = fig.add_gridspec(3, 2 * max(len(picks), 2), height_ratios=(1.4, 1.0, 0.7),
                        hspace=0.35)
  half = max(len(picks), 2)
  cmap = colormaps["tab10"]
  for j, (s, name) in enumerate(((0, "regular windows (W-MSA)"),
                                 (shift, f"shifted windows (SW-MSA, shift {shift})"))):
    ax = fig.add_subplot(gs[0, j * half:(j + 1) * half])
    ids = _window_ids(gh, gw, window, s)
    ext = (-0.5, gw * px - 0.5, gh * py - 0.5, -0.5)
    if img is not None:
      _show_image(ax, img)
      ax.imshow(ids % 10, cmap=cmap, vmin=0, vmax=9, alpha=0.4, extent=ext,
                interpolation="nearest")
    else:
      ax.imshow(ids % 10, cmap=cmap, vmin=0, vmax=9, extent=ext, interpolation="nearest")
    for k in range(gh // window):                       # window borders, in token units
      ax.axhline((k * window + s) % gh * py - 0.5, color="white", lw=1.5)
    for k in range(gw // window):
      ax.axvline((k * window + s) % gw * px - 0.5, color="white", lw=1.5)
    for w_id in range(nw):                              # label the piece that did not wrap
      wy, wx = divmod(w_id, gw // window)
      y0, x0 = (wy * window + s) % gh, (wx * window + s) % gw
      yc, xc = (y0 + min(y0 + window, gh)) / 2, (x0 + min(x0 + window, gw)) / 2
      ax.text(xc * px - 0.5, yc * py - 0.5, str(w_id), color="black", ha="center",
              va="center", fontsize=9, weight="bold",
              bbox=dict(facecolor="white", alpha=0.7, linewidth=0, boxstyle="round,pad=0.2"))
    ax.set_title(f"{name}\n{gh}x{gw} tokens, window {window}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
  for j, w_id in enumerate(picks):
    cols = slice(2 * j * half // len(picks), 2 * (j + 1) * half // len(picks))
    ax = fig.add_subplot(gs[1, cols])
    ax.imshow(mask[w_id], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(f"window {w_id}: {int(mask[w_id].sum())}/{t * t} pairs allowed", fontsize=8)
    ax.set_xlabel("key token", fontsize=7)
    if j == 0:
      ax.set_ylabel("query token", fontsize=7)
    ax.tick_params(labelsize=6)
    # tokens that may attend each other form one region: colour each token by its region
    region = np.argmax(mask[w_id], axis=1).reshape(window, window)
    _, region = np.unique(region, return_inverse=True)
    ax = fig.add_subplot(gs[2, cols])
    ax.imshow(region.reshape(window, window), cmap="Set2", vmin=0, vmax=7,
              interpolation="nearest")
    ax.set_title(f"window {w_id}: {region.max() + 1} region(s)", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle(title or "Swin shifted windows and the SW-MSA mask (white = may attend)",
               fontsize=10)
  return _save(fig, path)


def stn_warps(inputs: np.ndarray, warped: np.ndarray, path: str,
              labels: Sequence[int] | None = None, class_names: Sequence[str] | None = None,
              title: str | None = None, per_row: int = 8) -> str:
  """Spatial Transformer inputs next to their warped outputs.

  Args:
    inputs: [n, h, w, c] the images fed to the STN.
    warped: [n, h', w', c] its outputs (what the classifier sees). Each input/output pair
      shares one grey scale.
    path: PNG to write; labels / class_names: optional titles; per_row: pairs per row.

  Returns:
    `path`. Rows alternate: inputs, then their warped outputs.
  """
  inputs, warped = np.asarray(inputs, np.float32), np.asarray(warped, np.float32)
  if inputs.ndim != 4 or warped.ndim != 4 or inputs.shape[0] != warped.shape[0]:
    raise ValueError(f"stn_warps(): inputs {inputs.shape} and warped {warped.shape} must be "
                     f"[n, h, w, c] with the same n.")
  n = inputs.shape[0]
  cols = min(n, per_row)
  blocks = math.ceil(n / cols)
  fig = _figure(1.5 * cols + 0.6, 3.1 * blocks + 0.4)
  axes = fig.subplots(2 * blocks, cols, squeeze=False)
  for ax in axes.reshape(-1):
    ax.axis("off")
  for i in range(n):
    r, c = divmod(i, cols)
    lo = float(min(inputs[i].min(), warped[i].min()))
    hi = float(max(inputs[i].max(), warped[i].max()))
    for row, img in ((2 * r, inputs[i]), (2 * r + 1, warped[i])):
      ax = axes[row, c]
      ax.axis("on")
      _show_image(ax, img, lo, hi)
    if labels is not None:
      axes[2 * r, c].set_title(class_name(labels[i], class_names), fontsize=8)
  for r in range(blocks):
    axes[2 * r, 0].set_ylabel("input", fontsize=8)
    axes[2 * r + 1, 0].set_ylabel("warped", fontsize=8)
  fig.suptitle(title or "Spatial Transformer: inputs (top) and warped outputs (below)",
               fontsize=10)
  return _save(fig, path)


def gates_per_class(gates: dict[str, np.ndarray], class_names: Sequence[str] | None, path: str,
                    title: str | None = None, counts: Sequence[int] | None = None,
                    sort_channels: bool = True) -> str:
  """Channel gates averaged per class, one heatmap (class x channel) per block.

  Args:
    gates: block name -> [num_classes, C] mean gate per class, values in (0, 1).
    class_names: row labels (default the class numbers); counts: optional [num_classes]
      examples per class, shown with the names.
    path: PNG to write; title: figure title.
    sort_channels: order each panel's channels by their gate averaged over the classes
      (largest first), so a class's departures from the common pattern stand out.

  Returns:
    `path`. Each panel has its own colour scale (the per-class differences are small
    next to the range of the gates), with its colour bar.
  """
  if not gates:
    raise ValueError("gates_per_class(): argument 'gates' is empty.")
  items = [(k, np.asarray(v, np.float32)) for k, v in gates.items()]
  for k, g in items:
    if g.ndim != 2:
      raise ValueError(f"gates_per_class(): gates[{k!r}] has shape {g.shape}; expected "
                       f"[num_classes, channels].")
  k_classes = items[0][1].shape[0]
  names = [class_name(i, class_names) for i in range(k_classes)]
  if counts is not None:
    names = [f"{nm} ({int(c)})" for nm, c in zip(names, counts)]
  widths = [max(0.06 * g.shape[1], 2.5) + 1.5 for _, g in items]
  fig = _figure(sum(widths) + 1.5, 0.3 * k_classes + 2.0)
  axes = fig.subplots(1, len(items), squeeze=False, width_ratios=widths)[0]
  for ax, (name, g) in zip(axes, items):
    xlabel = f"channel (of {g.shape[1]})"
    if sort_channels:   # by the mean over classes: adds no class structure of its own
      g = g[:, np.argsort(-g.mean(0), kind="stable")]
      xlabel = f"{g.shape[1]} channels, sorted by their mean gate"
    im = ax.imshow(g, cmap="magma", aspect="auto", interpolation="nearest")
    ax.set_yticks(range(k_classes), names, fontsize=7)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_title(name, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
  fig.suptitle(title or "channel gates averaged per class", fontsize=10)
  return _save(fig, path)
