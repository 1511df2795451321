"""Executes every Colab notebook top to bottom on CPU with tiny parameters.

Each notebook has one cell tagged `parameters`; the test inserts a cell after it
with the overrides below (papermill's convention) and runs the notebook with
nbclient in a fresh kernel. The install cell sees `attn_jax` already installed
from the working tree, so nothing is fetched.
"""
import glob
import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "colab", "*.ipynb")))

# Tiny settings per notebook (keys must exist in the notebook's parameters cell).
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
TINY = {
    "attention_basics.ipynb": {"D_VALUES": [2, 16, 128], "N_SAMPLES": 200, "N_TRAIN": 30},
    "channel_spatial_attention.ipynb": {
        "DATA_DIR": os.path.join(SHARED, "mnist"), "N_TRAIN": 256, "N_TEST": 64, "BATCH_SIZE": 32,
        "GATE_STEPS": 3, "STN_STEPS": 3},
    "seq2seq_attention.ipynb": {"GRU_STEPS": 4, "TRANSFORMER_STEPS": 4, "BATCH_SIZE": 16,
                                "NUM_TRAIN": 200, "N_SHOW": 2, "BEAM_SIZE": 2},
    "vision_tpu.ipynb": {"DATA_DIR": os.path.join(SHARED, "fashion_mnist"), "STEPS": 4,
                         "BATCH_SIZE": 16, "EVAL_EXAMPLES": 64},
}
# Notebooks that read real data; skipped when ../shared/data is absent.
NEEDS_DATA = {"channel_spatial_attention.ipynb": os.path.join(SHARED, "mnist"),
              "vision_tpu.ipynb": os.path.join(SHARED, "fashion_mnist")}


def _run(path, overrides, tmp_path):
  nb = nbformat.read(path, as_version=4)
  idx = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
  assert len(idx) == 1, f"{path}: needs exactly one cell tagged 'parameters'"
  params_src = nb.cells[idx[0]].source
  for name in overrides:
    assert f"{name} =" in params_src, f"{path}: parameter {name} is not in the parameters cell"
  overrides = dict(overrides)
  for name in ("WORKDIR", "CHECKPOINT_DIR"):  # keep run outputs out of the working tree
    if f"{name} =" in params_src:
      overrides[name] = str(tmp_path / "runs")
  src = "\n".join(f"{k} = {v!r}" for k, v in overrides.items())
  nb.cells.insert(idx[0] + 1, nbformat.v4.new_code_cell(src, metadata={"tags": ["injected-parameters"]}))
  env_before = dict(os.environ)
  nb.cells.append(nbformat.v4.new_code_cell("import attn_jax; print('ATTN_JAX_FILE=' + attn_jax.__file__)"))
  os.environ.update({"ATTN_JAX_SOURCE": ROOT, "JAX_PLATFORMS": "cpu"})
  try:
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
  finally:
    os.environ.clear()
    os.environ.update(env_before)
  return nb


def test_every_notebook_has_tiny_settings():
  assert NOTEBOOKS, "no notebooks in colab/"
  assert sorted(os.path.basename(p) for p in NOTEBOOKS) == sorted(TINY)


def test_notebooks_are_stored_without_outputs():
  for path in NOTEBOOKS:
    nb = nbformat.read(path, as_version=4)
    for c in nb.cells:
      if c.cell_type == "code":
        assert not c.outputs and c.execution_count is None, f"{path} has stored outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, tmp_path):
  need = NEEDS_DATA.get(os.path.basename(path))
  if need and not os.path.isdir(need):
    pytest.skip(f"needs {need}")
  nb = _run(path, TINY.get(os.path.basename(path), {}), tmp_path)
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.get("output_type") == "error"]
  assert not errors
  # The kernel imported the working tree, not some other installed copy.
  printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
  assert "ATTN_JAX_FILE=" + os.path.join(ROOT, "attn_jax") in printed, printed
  images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.outputs
               if "image/png" in o.get("data", {}))
  assert images >= 1, "the notebook drew no plots"
