"""Data parallelism: 8 simulated devices (jit and pmap) and 2 processes x 4 devices
give the same training as 1 device with the same global batch.

The parent pytest process has already initialised JAX with one CPU device, so the
multi-device runs happen in child processes (this file run as a script) with
`XLA_FLAGS=--xla_force_host_platform_device_count=N` in their environment.
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from child_env import child_env

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def flat_params(params):
  import jax
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def run_config(data, workdir, **overrides):
  """The run every variant performs: MLP, 6 steps, global batch 16, eval on 20 examples."""
  from test_train_loop import tiny_config
  from attn_jax.train.loop import train_and_evaluate
  c = tiny_config(data, num_steps=6, eval_every=3, checkpoint_every=3, **overrides)
  out = train_and_evaluate(c, workdir)
  np.savez(os.path.join(workdir, "params.npz"), **flat_params(out["state"].params))
  with open(os.path.join(workdir, "eval.json"), "w") as f:
    json.dump(out["eval"], f)
  return out


def child(env_devices, args, timeout=240):
  env = child_env(env_devices)
  return subprocess.Popen([sys.executable, __file__, *args], env=env, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc, timeout=300):
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, out[-4000:]
  return out


def losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return np.array([r["loss"] for r in map(json.loads, f) if "loss" in r])


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Runs every variant once: 1 device here; 8 devices (jit, pmap) in one child; and two
  processes of 4 devices joined with jax.distributed on 127.0.0.1, all at the same time."""
  from test_data_readers import make_idx_folder
  base = tmp_path_factory.mktemp("parallel")
  data = make_idx_folder(str(base / "data"), n_train=96, n_test=20)
  port = free_port()
  procs = [child(8, ["devices", data, str(base)])]
  procs += [child(4, ["host", data, str(base), str(p), str(port)]) for p in range(2)]
  run_config(data, str(base / "one"))
  for p in procs:
    finish(p)
  return base


@pytest.mark.parametrize("strategy", ["jit", "pmap"])
def test_eight_devices_match_one_device(runs, strategy):
  one, many = losses(runs / "one"), losses(runs / strategy)
  assert len(one) == len(many) == 6
  np.testing.assert_allclose(many, one, rtol=0, atol=1e-5)
  a, b = np.load(runs / "one" / "params.npz"), np.load(runs / strategy / "params.npz")
  for k in a.files:
    np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6)
  e1 = json.load(open(runs / "one" / "eval.json"))
  e8 = json.load(open(runs / strategy / "eval.json"))
  assert e1["eval_examples"] == e8["eval_examples"] == 20   # padded batches, every example once
  assert abs(e1["eval_accuracy"] - e8["eval_accuracy"]) < 1e-6


def test_state_born_on_the_mesh_and_restored_into_its_shardings(runs):
  got = json.load(open(runs / "sharded.json"))
  assert got == {"init_bit_equal": True, "init_on_mesh": True, "restored_step": 6,
                 "restored_on_mesh": True, "restored_equal": True}


def test_two_processes_match_one_process_of_eight(runs):
  ref = np.load(runs / "jit" / "params.npz")
  for p in range(2):
    got = np.load(runs / "multi" / f"params{p}.npz")
    for k in ref.files:
      np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(losses(runs / "multi"), losses(runs / "jit"), atol=1e-5)
  assert json.load(open(runs / "multi" / "eval.json"))["eval_examples"] == 20
  assert sorted(os.listdir(runs / "multi" / "checkpoints")) == ["3", "6"]


def born_sharded(data, base):
  """On 8 devices: the state created on the mesh equals the single-device init bit for bit,
  and a checkpoint restores straight into the mesh shardings (no host copy) with the saved
  values. Writes sharded.json for the test below."""
  import jax
  from jax.sharding import NamedSharding, PartitionSpec
  from test_train_loop import tiny_config
  from attn_jax.train import checkpoint as ckpt_lib
  from attn_jax.train import loop
  from attn_jax.train import step as step_lib
  c = tiny_config(data, num_steps=6, eval_every=3, checkpoint_every=3)
  s = loop.setup(c, os.path.join(base, "jit"))
  on_mesh = s.init_state()
  single = step_lib.init_state(s.model, s.task, s.tx, s.data.train.batch_at(0), c.seed)
  replicated = NamedSharding(s.strategy.mesh, PartitionSpec())
  leaves = jax.tree.leaves(on_mesh)
  out = {"init_bit_equal": all(np.array_equal(np.asarray(a.addressable_data(0)), np.asarray(b))
                               for a, b in zip(leaves, jax.tree.leaves(single))),
         "init_on_mesh": all(a.sharding == replicated and len(a.sharding.device_set) == 8
                             for a in leaves)}
  ckpt = ckpt_lib.Checkpointer(os.path.join(base, "jit"), 2, async_save=False)
  restored, _, step = ckpt.restore(s.abstract_state())
  ckpt.close()
  saved = np.load(os.path.join(base, "jit", "params.npz"))
  out["restored_step"] = step
  out["restored_on_mesh"] = all(isinstance(a, jax.Array) and a.sharding == replicated
                                for a in jax.tree.leaves(restored))
  out["restored_equal"] = all(np.array_equal(saved[k], v)
                              for k, v in flat_params(restored.params).items())
  with open(os.path.join(base, "sharded.json"), "w") as f:
    json.dump(out, f)


def _main(argv):
  mode, data, base = argv[:3]
  import jax
  if mode == "devices":
    assert jax.device_count() == 8
    for strategy in ("jit", "pmap"):
      run_config(data, os.path.join(base, strategy), strategy=strategy)
    born_sharded(data, base)
    return
  pid, port = int(argv[3]), int(argv[4])
  out = run_config(data, os.path.join(base, "multi"), **{
      "distributed.coordinator_address": f"127.0.0.1:{port}", "distributed.num_processes": 2,
      "distributed.process_id": pid})
  assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4
  np.savez(os.path.join(base, "multi", f"params{pid}.npz"), **flat_params(out["state"].params))


if __name__ == "__main__":
  sys.path.insert(0, HERE)
  _main(sys.argv[1:])
