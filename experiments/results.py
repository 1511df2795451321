"""Markdown results table from run directories.

    python -m experiments.results runs/fmnist_vit runs/m30k_tr_de_en ...   # or: runs/*
    python -m experiments.results --out docs/results.md --curves docs/figures/curves runs/*

Reads each run's `run.json` (written by the training loop: config, parameter count, steps,
training wall time over all resumptions, hardware, command) and any `eval_<split>.json`
written by `experiments.evaluate` (BLEU, perplexity). One row per run: model, params,
dataset, metric, measured value, published anchor, whether the anchor is met, steps,
epochs, wall time, hardware, the date of the run's last update and the commands that
produced it.

With `--curves DIR` each run also gets `DIR/<run>.png`: train loss and the validation metric
against steps and training wall time (`attn_jax.analysis.curves`).

With `--archive DIR` the small records of each run (`run.json`, `config.json`, `metrics.jsonl`,
`eval_*.json`, `selection_*.json`, `samples.json`; no checkpoints) are first copied to
`DIR/<run>/` and the table is built from those copies. The repository keeps them in
`results/`, so its table can be rebuilt from a clean clone:

    python -m experiments.results --out docs/results.md results/*/

Classification rows report the final eval accuracy on `config.data.eval_split` (the test
split in every shipped config; never the best-of-many on test). Translation rows report
the lower-cased sacrebleu BLEU of the `eval_<split>*.json` files whose split is not `val`
(the test split): the widest beam is the measured value, cased BLEU, perplexity, the greedy
BLEU and the checkpoint-selection rule (`evaluate --select`) go beside it.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import sys
from typing import Any

from absl import app, flags

from attn_jax.train.metrics import utc_stamp

_OUT = flags.DEFINE_string("out", "", "Also write the table to this markdown file.")
_CURVES = flags.DEFINE_string("curves", "", "Write one learning-curve PNG per run here.")
_ARCHIVE = flags.DEFINE_string("archive", "", "Copy each run's records (no checkpoints) to "
                               "<archive>/<run>/ and build the table from the copies.")

# What a row, a curve or a later re-tabulation needs; everything else in a workdir (checkpoints,
# TensorBoard events, pictures) stays behind.
RECORD_PATTERNS = ("run.json", "config.json", "metrics.jsonl", "eval_*.json", "selection_*.json",
                   "samples.json")


def _load(path: str) -> dict[str, Any] | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _model_name(m: dict[str, Any]) -> str:
  name = m.get("name", "?")
  if name == "resnet":
    depth = 2 + 2 * sum(m.get("depth", (2, 2, 2, 2)))   # basic blocks: 2 convs each
    return f"ResNet{depth} w{m.get('width')} + {m.get('attention', 'none')}"
  if name == "vit":
    return f"ViT d{m.get('depth')} w{m.get('width')} p{m.get('patch_size')}"
  if name == "swin":
    return f"Swin {tuple(m.get('depth', ()))} w{m.get('width')} win{m.get('window_size')}"
  if name == "transformer":
    return f"Transformer {m.get('depth')}+{m.get('depth')} w{m.get('width')}"
  if name == "seq2seq":
    bi = "bi" if m.get("bidirectional") else ""
    return f"{bi}{m.get('cell', 'gru').upper()} {m.get('width')} + {m.get('attention')}"
  if name == "stn_cnn":
    return "STN + CNN"
  if name == "cnn":
    return "CNN"
  return name


def _dataset(d: dict[str, Any]) -> str:
  if d.get("source") == "multi30k":
    return f"Multi30k {d.get('src_lang')}->{d.get('tgt_lang')}"
  if d.get("source") == "text":   # language model: the training file, per-token metrics
    name = os.path.basename(str(d.get("train_files", ""))).split(",")[0]
    return f"{name} ({d.get('tokenizer', '')}, rows of {d.get('seq_len')})"
  name = d.get("name") or os.path.basename(str(d.get("path", "")).rstrip("/"))
  extra = []
  if d.get("rotate"):
    extra.append(f"rot +-{d['rotate']:g} deg")
  if d.get("translate"):
    extra.append(f"shift +-{d['translate']} px")
  return name + (f" ({', '.join(extra)})" if extra else "")


def archive(workdir: str, dest_root: str) -> str:
  """Copy the records of `workdir` (RECORD_PATTERNS) to `dest_root/<run>/`; returns that path.

  Raises:
    FileNotFoundError: `workdir` has no run.json.
  """
  name = os.path.basename(workdir.rstrip("/"))
  if not os.path.exists(os.path.join(workdir, "run.json")):
    raise FileNotFoundError(f"archive: {workdir} has no run.json; train with experiments.train")
  dest = os.path.join(dest_root, name)
  if os.path.abspath(dest) == os.path.abspath(workdir):
    return dest
  os.makedirs(dest, exist_ok=True)
  for pattern in RECORD_PATTERNS:
    for src in sorted(glob.glob(os.path.join(workdir, pattern))):
      shutil.copy2(src, os.path.join(dest, os.path.basename(src)))
  run = _load(os.path.join(dest, "run.json"))
  if "updated" not in run:   # older records: the trainer's last write of run.json dates it
    run["updated"] = utc_stamp(os.path.getmtime(os.path.join(workdir, "run.json")))
    with open(os.path.join(dest, "run.json"), "w") as f:
      json.dump(run, f, indent=1)
  return dest


def _test_evals(workdir: str) -> list[dict[str, Any]]:
  """The eval_<split>*.json not on the validation split, widest beam first, then the latest
  step (file modification times do not survive a git checkout, so they are not used)."""
  files = sorted(glob.glob(os.path.join(workdir, "eval_*.json")))
  evals = [e for e in map(_load, files) if e and e.get("split") != "val"]
  return sorted(evals, key=lambda e: (-e.get("beam", 1), -int(e.get("step") or 0)))


def _bleu_notes(test: dict[str, Any], others: list[dict[str, Any]]) -> str:
  notes = [f"cased BLEU {test.get('bleu', 0):.1f}", f"ppl {test.get('eval_perplexity', 0):.1f}",
           f"beam {test.get('beam', 1)}"]
  greedy = next((e for e in others if e.get("beam", 1) == 1 and e.get("split") == test.get("split")
                 and e.get("step") == test.get("step")), None)
  if greedy is not None and test.get("beam", 1) > 1:
    notes.append(f"greedy {greedy['bleu_lower']:.1f}")
  sel = test.get("selected_by")
  notes.append(f"step {test.get('step')}" + (
      f" best {sel['split']} {sel['metric']} ({sel['value']:.1f})" if sel else ""))
  return ", ".join(notes)


def row(workdir: str) -> dict[str, Any] | None:
  """One table row from a run directory (None if it has no run.json)."""
  run = _load(os.path.join(workdir, "run.json"))
  if run is None:
    return None
  cfg = run["config"]
  anchor = cfg.get("anchor", {})
  ev = run.get("eval", {})
  commands = list(run.get("commands", []))
  num_train = {"fashion_mnist": 60_000, "mnist": 60_000, "cifar10": 50_000}.get(
      cfg["data"].get("name"), 29_000 if cfg["data"].get("source") == "multi30k" else 0)
  r = {"run": os.path.basename(workdir.rstrip("/")), "model": _model_name(cfg["model"]),
       "params": run.get("num_params", 0), "dataset": _dataset(cfg["data"]),
       "steps": run.get("step", 0), "planned": cfg.get("num_steps"),
       "epochs": (run.get("step", 0) * cfg["batch_size"] / num_train) if num_train else None,
       "wall_min": run.get("wall_s", 0.0) / 60, "hardware": run.get("hardware", "?"),
       "date": str(run.get("updated", ""))[:10] or None,
       "anchor": anchor.get("value") or None, "anchor_source": anchor.get("source", ""),
       "extra": ""}
  metric = anchor.get("metric", "accuracy")
  if metric == "bleu_lower":
    evals = _test_evals(workdir)
    if not evals:
      r.update(metric="BLEU (lower)", value=None, extra="not evaluated on test yet")
    else:
      test = evals[0]
      r.update(metric=f"BLEU lc, {test.get('split')}", value=test.get("bleu_lower"),
               extra=_bleu_notes(test, evals[1:]))
      commands.extend(e.get("command", "") for e in evals)
  elif cfg["data"].get("source") == "text":   # language model: perplexity on eval_files
    ppl = ev.get("eval_perplexity")
    r.update(metric=f"perplexity / {cfg['data'].get('tokenizer', 'token')}, "
             f"{os.path.basename(str(cfg['data'].get('eval_files', '')))}", value=ppl,
             extra="" if ev.get("eval_accuracy") is None else
             f"next-token accuracy {100 * ev['eval_accuracy']:.1f}%")
  elif metric == "error":
    acc = ev.get("eval_accuracy")
    r.update(metric=f"error %, {cfg['data'].get('eval_split')}",
             value=None if acc is None else 100 * (1 - acc))
  else:
    acc = ev.get("eval_accuracy")
    r.update(metric=f"accuracy %, {cfg['data'].get('eval_split')}",
             value=None if acc is None else 100 * acc)
  higher = anchor.get("higher_is_better", True) and metric != "error"
  if r["value"] is None or r["anchor"] is None:
    r["met"] = "—"
  else:
    r["met"] = "yes" if (r["value"] >= r["anchor"] if higher else r["value"] <= r["anchor"]) else "no"
  r["commands"] = [c for c in commands if c]
  return r


def _fmt(v, spec: str) -> str:
  return "—" if v is None else format(v, spec)


def table(rows: list[dict[str, Any]]) -> str:
  """Markdown: one row per run, commands listed under the table."""
  head = ("| run | model | params | dataset | metric | measured | anchor | met | steps (planned) "
          "| epochs | wall time | hardware | date | notes |")
  lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
  for r in rows:
    steps = f"{r['steps']:,}" + (f" ({r['planned']:,})" if r["planned"] != r["steps"] else "")
    lines.append(
        f"| {r['run']} | {r['model']} | {r['params'] / 1e6:.2f}M | {r['dataset']} | {r['metric']} "
        f"| {_fmt(r['value'], '.2f')} | {_fmt(r['anchor'], '.1f')} | {r['met']} | {steps} "
        f"| {_fmt(r['epochs'], '.1f')} | {r['wall_min']:.0f} min | {r['hardware']} "
        f"| {r['date'] or '—'} | {r['extra']} |")
  lines.append("")
  lines.append("Anchors: " + "; ".join(sorted({f"{r['anchor_source']}" for r in rows
                                                if r["anchor_source"]})) + ".")
  lines.append("")
  lines.append("Commands:")
  lines.append("")
  for r in rows:
    for c in r["commands"]:
      lines.append(f"- `{r['run']}`: `{c}`")
  return "\n".join(lines) + "\n"


def _eval_split(workdir: str) -> str:
  """The split the training loop evaluated on (`config.data.eval_split`), for curve labels."""
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      return json.load(f).get("data", {}).get("eval_split") or "validation"
  except (OSError, json.JSONDecodeError):
    return "validation"


def main(argv: list[str]) -> None:
  dirs = argv[1:] or sorted(glob.glob("runs/*/"))
  if _ARCHIVE.value:
    dirs = [archive(d, _ARCHIVE.value) for d in dirs]
    print(f"archived {len(dirs)} run record(s) in {_ARCHIVE.value}")
  rows = [r for r in (row(d) for d in dirs) if r is not None]
  if not rows:
    raise app.UsageError(f"no run.json in {dirs}; train with experiments.train first.")
  if _CURVES.value:
    from attn_jax.analysis.curves import plot_curves, read_curves
    for d in dirs:
      name, path = os.path.basename(d.rstrip("/")), os.path.join(d, "metrics.jsonl")
      if os.path.exists(path) and os.path.exists(os.path.join(d, "run.json")):
        split = _eval_split(d)
        print("wrote", plot_curves(read_curves(path), os.path.join(_CURVES.value, f"{name}.png"),
                                   title=name, eval_split=split))
  text = table(rows)
  print(text)
  if _OUT.value:
    os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
    with open(_OUT.value, "w") as f:
      f.write(text)


if __name__ == "__main__":
  app.run(main, argv=sys.argv)
