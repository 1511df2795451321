"""Sequence parallelism in the runner: `config.mesh.seq` splits [batch, len] inputs over
devices and every attention layer runs ring attention.

On 8 simulated devices (a child process, this file as a script): the packed character LM
(RoPE, grouped K/V heads, causal, segment ids) trained 4 steps on mesh data=2,seq=4 ends
with the parameters of the 1-device run (float32 rounding) and its compiled step rotates K/V
blocks (collective-permute); so does the compiled step of a ViT on mesh seq=8 (ring
without masks).
"""
import json
import os
import sys

import numpy as np
import pytest

from child_env import child_env

HERE = os.path.dirname(os.path.abspath(__file__))
TEXT = ["a dog runs .", "a cat sits on the mat .", "two dogs run in the park ."] * 30


def lm_config(text_file, mesh=None):
  from configs import multi30k_lm
  c = multi30k_lm.get_config()
  c.data.train_files = c.data.eval_files = text_file
  c.data.seq_len, c.data.prefetch = 64, 0
  c.model.width, c.model.depth, c.model.num_heads, c.model.mlp_dim = 32, 1, 4, 64
  c.model.num_kv_heads, c.model.dropout_rate = 2, 0.0
  c.num_steps, c.eval_every, c.checkpoint_every, c.log_every = 4, 4, 4, 1
  c.batch_size, c.eval_batch_size, c.optim.warmup_steps, c.progress = 4, 4, 1, "off"
  c.async_checkpoint = False
  for k, v in (mesh or {}).items():
    c.mesh[k] = v
  return c


def vit_config(data, mesh=None):
  from test_sharding import vit_config as sharded_vit
  c = sharded_vit(data, mesh)
  c.model.scan_layers = False
  return c


def train(config, workdir):
  """train_and_evaluate -> params.npz and eval.json in workdir."""
  from test_train_parallel import flat_params
  from attn_jax.train import loop
  out = loop.train_and_evaluate(config, workdir)
  np.savez(os.path.join(workdir, "params.npz"), **flat_params(out["state"].params))
  with open(os.path.join(workdir, "eval.json"), "w") as f:
    json.dump(out["eval"], f)


def step_facts(config, workdir):
  """The compiled step on the mesh: whether it has collective-permutes (the ring)."""
  import jax
  from attn_jax.train import loop
  from attn_jax.train import step as step_lib
  s = loop.setup(config, workdir)
  state = s.init_state()
  step = s.strategy.compile_train(step_lib.make_train_step(
      s.model, s.task, s.tx, s.schedule, config.label_smoothing))
  batch = s.strategy.put_batch(s.data.train.batch_at(0))
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                          state)
  hlo = step.lower(abstract, batch).compile().as_text()
  return {"collective_permute": "collective-permute" in hlo, "devices": jax.device_count()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  import subprocess
  from test_data_readers import make_idx_folder
  from test_train_parallel import finish
  base = tmp_path_factory.mktemp("seqpar")
  (base / "text.txt").write_text("\n".join(TEXT) + "\n")
  data = make_idx_folder(str(base / "data"), n_train=48, n_test=16)
  root = os.path.dirname(HERE)
  env = child_env(8, "--xla_cpu_collective_call_terminate_timeout_seconds=900")
  proc = subprocess.Popen([sys.executable, __file__, "eight", str(base), data], env=env,
                          cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  train(lm_config(str(base / "text.txt")), str(base / "lm_one"))
  (base / "eight.log").write_text(finish(proc, timeout=600))
  return base


def _close(a, b):
  for k in a.files:
    np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("model", ["lm"])
def test_sequence_parallel_training_matches_one_device(runs, model):
  one = np.load(runs / f"{model}_one" / "params.npz")
  seq = np.load(runs / f"{model}_seq" / "params.npz")
  assert set(one.files) == set(seq.files)
  _close(one, seq)
  e1 = json.loads((runs / f"{model}_one" / "eval.json").read_text())
  e8 = json.loads((runs / f"{model}_seq" / "eval.json").read_text())
  assert e8["eval_loss"] == pytest.approx(e1["eval_loss"], rel=1e-5)


def test_sequence_parallel_step_runs_the_ring(runs):
  facts = json.loads((runs / "facts.json").read_text())
  assert facts == {m: {"collective_permute": True, "devices": 8} for m in ("lm", "vit")}
  log = (runs / "eight.log").read_text()
  assert "mesh data=2,seq=4" in log, log[-2000:]


def _main(argv):
  mode, base, data = argv
  import jax
  assert mode == "eight" and jax.device_count() == 8
  text = os.path.join(base, "text.txt")
  mesh = {"data": 2, "seq": 4}
  train(lm_config(text, mesh), os.path.join(base, "lm_seq"))
  facts = {"lm": step_facts(lm_config(text, mesh), os.path.join(base, "lm_facts")),
           "vit": step_facts(vit_config(data, {"seq": 8}), os.path.join(base, "vit_facts"))}
  with open(os.path.join(base, "facts.json"), "w") as f:
    json.dump(facts, f)


if __name__ == "__main__":
  sys.path.insert(0, HERE)
  _main(sys.argv[1:])
