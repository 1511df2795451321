"""Meshes past data parallelism: FSDP, tensor parallel and their sharded checkpoints.

A tiny scanned ViT trained 5 steps with its state sharded ends with the parameters of the
1-device run: FSDP + tensor parallel on 8 simulated devices (the whole training loop:
eval, the memory line, a sharded checkpoint), and FSDP over 2 processes x 4 devices
(jax.distributed on 127.0.0.1). Restored into an FSDP mesh of 8 devices a device holds 1/8
of the state; the 8-device checkpoint restores on 4 devices (other meshes) with identical
values. Multi-device runs are child processes (this file as a script with
`XLA_FLAGS=--xla_force_host_platform_device_count=N`), as in test_train_parallel.py, whose
8-device runs cover data parallelism (the default mesh).
"""
import json
import os
import sys

import numpy as np
import pytest

from child_env import child_env

HERE = os.path.dirname(os.path.abspath(__file__))
MESHES = {"fsdp": {"fsdp": 8}, "fsdp_model": {"fsdp": 4, "model": 2}}


def vit_config(data, mesh=None, **overrides):
  """Tiny scanned ViT (width 32, 4 heads, one block: the layer axis is there, the compile
  is short) on 8x8 images, 5 steps of SGD with momentum (Adam would turn the rounding
  noise of gradients that are exactly zero in theory, like the key bias's, into updates)."""
  from test_train_loop import tiny_config
  c = tiny_config(data, num_steps=5, eval_every=5, checkpoint_every=5, log_every=1,
                  **{"optim.name": "sgd", "optim.momentum": 0.9, "mesh.fsdp_min_size": 0,
                     "optim.learning_rate": 0.05, "async_checkpoint": False,
                     "heatmap": False, "data.prefetch": 0}, **overrides)
  c.model = type(c.model)({"name": "vit", "patch_size": 4, "width": 32, "depth": 1,
                           "num_heads": 4, "mlp_dim": 64, "scan_layers": True})
  for k, v in (mesh or {}).items():
    c.mesh[k] = v
  return c


def train(data, workdir, mesh=None):
  """train_and_evaluate -> params.npz and eval.json in workdir."""
  from test_train_parallel import flat_params
  from attn_jax.train import loop
  out = loop.train_and_evaluate(vit_config(data, mesh), workdir)
  np.savez(os.path.join(workdir, "params.npz"), **flat_params(out["state"].params))
  with open(os.path.join(workdir, "eval.json"), "w") as f:
    json.dump(out["eval"], f)
  return out


def device_bytes(tree, device):
  """Bytes of `tree`'s shards that live on `device` (read from the arrays themselves)."""
  import jax
  return sum(s.data.nbytes for a in jax.tree.leaves(tree) for s in a.addressable_shards
             if s.device == device)


def restore(data, workdir, mesh):
  """The checkpoint of `workdir` restored into the shardings of `mesh` -> (state, step)."""
  from attn_jax.train import checkpoint as ckpt_lib
  from attn_jax.train import loop
  s = loop.setup(vit_config(data, mesh), workdir)
  ckpt = ckpt_lib.Checkpointer(workdir, 2, async_save=False)
  state, _, step = ckpt.restore(s.abstract_state())
  ckpt.close()
  return state, step


def eight_devices(data, base):
  """The fsdp+model run on 8 devices; bytes.json: the state's bytes on one device when its
  checkpoint is restored into each mesh of MESHES; table.md: experiments.memory_report."""
  import jax
  workdir = os.path.join(base, "fsdp_model")
  train(data, workdir, MESHES["fsdp_model"])
  out = {}
  for name, mesh in MESHES.items():
    state, _ = restore(data, workdir, mesh)
    dev = jax.devices()[0]
    out[name] = {"params": device_bytes(state.params, dev),
                 "opt_state": device_bytes(state.opt_state, dev),
                 "params_all": sum(a.nbytes for a in jax.tree.leaves(state.params)),
                 "opt_state_all": sum(a.nbytes for a in jax.tree.leaves(state.opt_state)),
                 "specs": {jax.tree_util.keystr(p): str(a.sharding.spec) for p, a in
                           jax.tree_util.tree_flatten_with_path(state.params)[0]}}
  with open(os.path.join(base, "bytes.json"), "w") as f:
    json.dump(out, f)
  from experiments import memory_report
  table = memory_report.main(["--config", os.path.join(os.path.dirname(HERE), "configs",
                                                       "mnist_vit.py"),
                              "--image_size", "8", "--channels", "1", "--num_classes", "4",
                              "--batch_size", "16", "--no_compile", "--unit", "KiB",
                              "--fsdp_min_size", "0",
                              "--meshes", "data=-1;fsdp=8;fsdp=4,model=2"])
  with open(os.path.join(base, "table.md"), "w") as f:
    f.write(table)


def four_devices(data, base):
  """Restores the 8-device fsdp+model checkpoint on 4 devices as fsdp=2,model=2 and as
  data parallel; writes restored.json (values equal, shardings the new mesh's)."""
  import jax
  from test_train_parallel import flat_params
  saved_dir = os.path.join(base, "fsdp_model")
  saved = np.load(os.path.join(saved_dir, "params.npz"))
  out = {}
  for name, mesh in (("fsdp2_model2", {"fsdp": 2, "model": 2}), ("data4", {})):
    restored, step = restore(data, saved_dir, mesh)
    leaves = jax.tree.leaves(restored)
    out[name] = {"step": step, "devices": len(jax.devices()),
                 "equal": all(np.array_equal(saved[k], v)
                              for k, v in flat_params(restored.params).items()),
                 "on_mesh": all(a.sharding.mesh.devices.size == 4 for a in leaves),
                 "w_q": str(restored.params["block_scan"]["attn"]["W_q"].sharding.spec)}
  with open(os.path.join(base, "restored.json"), "w") as f:
    json.dump(out, f)


def two_processes(data, base, pid, port):
  """Process `pid` of 2 (4 devices each) trains the FSDP run with the loop's own pieces
  (setup, state born sharded, compiled step, 5 batches; no eval or checkpoint: the
  8-device run tests those); writes multi/params<pid>.npz, gathered from both processes."""
  import jax
  from test_train_parallel import flat_params
  from attn_jax.train import loop
  from attn_jax.train import step as step_lib
  c = vit_config(data, MESHES["fsdp"], **{
      "distributed.coordinator_address": f"127.0.0.1:{port}", "distributed.num_processes": 2,
      "distributed.process_id": pid})
  s = loop.setup(c, base)
  assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4
  state = s.init_state()
  step = s.strategy.compile_train(step_lib.make_train_step(
      s.model, s.task, s.tx, s.schedule, c.label_smoothing,
      constrain_params=s.strategy.param_constraint()))
  for i in range(c.num_steps):
    state, _ = step(state, s.strategy.put_batch(s.data.train.batch_at(i)))
  params = s.strategy.host_state(state.params)      # sharded over both processes: gathered
  os.makedirs(os.path.join(base, "multi"), exist_ok=True)
  np.savez(os.path.join(base, "multi", f"params{pid}.npz"), **flat_params(params))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """1 device here; 8 devices and 2 processes x 4 devices in children at the same time;
  then 4 devices restoring the 8-device checkpoint."""
  from test_data_readers import make_idx_folder
  from test_train_parallel import finish, free_port
  base = tmp_path_factory.mktemp("sharding")
  data = make_idx_folder(str(base / "data"), n_train=48, n_test=16)
  port = free_port()
  procs = [_child(8, ["eight", data, str(base)])]
  procs += [_child(4, ["host", data, str(base), str(p), str(port)]) for p in range(2)]
  train(data, str(base / "one"))
  (base / "eight.log").write_text(finish(procs[0]))
  for p in procs[1:]:
    finish(p)
  finish(_child(4, ["four", data, str(base)]))
  return base


def _child(devices, args):
  """This file as a script with `devices` simulated CPU devices."""
  import subprocess
  root = os.path.dirname(HERE)
  # A loaded machine can keep a simulated device's thread from a collective for long.
  env = child_env(devices, "--xla_cpu_collective_call_terminate_timeout_seconds=900",
                  "--xla_cpu_collective_call_warn_stuck_timeout_seconds=300")
  return subprocess.Popen([sys.executable, __file__, *args], env=env, cwd=root,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _close(a, b):
  """Every leaf equal to float32 rounding: reductions split over other shapes round
  differently (the largest difference seen is ~1e-7 on weights of magnitude 0.1-1)."""
  for k in a.files:
    np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=5e-7, err_msg=k)


def test_fsdp_and_tensor_parallel_on_eight_devices_match_one_device(runs):
  _close(np.load(runs / "one" / "params.npz"), np.load(runs / "fsdp_model" / "params.npz"))
  e1, e8 = (json.load(open(runs / d / "eval.json")) for d in ("one", "fsdp_model"))
  assert e1["eval_examples"] == e8["eval_examples"] == 16
  assert abs(e1["eval_loss"] - e8["eval_loss"]) < 1e-5


def test_fsdp_over_two_processes_matches_one_device(runs):
  one, tp = np.load(runs / "one" / "params.npz"), np.load(runs / "fsdp_model" / "params.npz")
  for p in range(2):
    got = np.load(runs / "multi" / f"params{p}.npz")
    _close(one, got)
    _close(tp, got)


def test_fsdp_holds_an_eighth_of_the_state_per_device(runs):
  got = json.load(open(runs / "bytes.json"))
  for part in ("params", "opt_state"):
    full = got["fsdp"][part + "_all"]     # what one device holds when replicated
    assert got["fsdp"][part] <= full / 8 + 64, (part, got["fsdp"][part], full)
    # tensor parallel: what 'model' does not split (norms, embeddings) is on 2 devices
    assert got["fsdp_model"][part] <= full / 4
  specs = got["fsdp_model"]["specs"]
  assert specs["['block_scan']['attn']['W_q']"] == "P(None, 'fsdp', 'model')"
  assert specs["['block_scan']['attn']['W_o']"] == "P(None, 'model', 'fsdp')"
  assert specs["['block_scan']['mlp']['fc2']['kernel']"] == "P(None, 'model', 'fsdp')"


def test_memory_lines_and_report(runs):
  log = (runs / "eight.log").read_text()
  line = next(x for x in log.splitlines()
              if x.startswith("memory per device on mesh data=1,fsdp=4,model=2:"))
  assert "activations + temporaries" in line and "n/a" not in line, line
  rows = [r.split("|")[1:-1] for r in (runs / "table.md").read_text().splitlines()
          if r.startswith("| vit")]
  params = {r[1].strip(): float(r[3]) for r in rows}
  assert set(params) == {"data=8", "data=1,fsdp=8", "data=1,fsdp=4,model=2"}
  assert params["data=1,fsdp=8"] <= params["data=8"] / 8 + 0.1
  assert [int(r[2]) for r in rows] == [2, 2, 4]         # examples per device
  assert all(r[5].strip() == "n/a" for r in rows)       # --no_compile


def test_checkpoint_of_eight_devices_restores_on_four(runs):
  got = json.load(open(runs / "restored.json"))
  for name, w_q in (("fsdp2_model2", "P(None, 'fsdp', 'model')"),
                    ("data4", "P()")):
    assert got[name] == {"step": 5, "devices": 4, "equal": True, "on_mesh": True, "w_q": w_q}


# --- the rules, on one device (no mesh needed) ---------------------------------------------

def test_mesh_spec_parses_and_fills_the_data_axis():
  from attn_jax.train.sharding import MeshSpec
  assert MeshSpec.parse(None).is_default and MeshSpec.parse("").is_default
  spec = MeshSpec.parse("fsdp=4, model=2")
  assert spec.sizes(16) == {"data": 2, "fsdp": 4, "seq": 1, "model": 2}
  assert MeshSpec.parse({"data": 2, "fsdp": 4}).sizes(8)["fsdp"] == 4
  for bad, n in (("fsdp=3", 8), ("data=2,fsdp=2", 8), ("model=0", 8)):
    with pytest.raises(ValueError):
      MeshSpec.parse(bad).sizes(n)
  with pytest.raises(ValueError, match="unknown key"):
    MeshSpec.parse("tensor=2")
  with pytest.raises(ValueError, match="axis=size"):
    MeshSpec.parse("fsdp")


def test_partition_rules_for_heads_hidden_units_and_layer_axes():
  from jax.sharding import PartitionSpec as P
  from attn_jax.train.sharding import param_spec
  tp = dict(fsdp=4, model=2, fsdp_min_size=0)
  assert param_spec(("block_scan", "attn", "W_q"), (8, 64, 64), **tp) == P(None, "fsdp", "model")
  assert param_spec(("layer_scan", "self_attn", "W_o"), (8, 64, 64), **tp) == \
      P(None, "model", "fsdp")
  assert param_spec(("mlp", "fc1", "kernel"), (64, 256), **tp) == P("fsdp", "model")
  assert param_spec(("mlp", "fc2", "kernel"), (256, 64), **tp) == P("model", "fsdp")
  assert param_spec(("attn", "b_q"), (64,), **tp) == P(("model", "fsdp"))
  assert param_spec(("mlp", "fc2", "bias"), (64,), **tp) == P("fsdp")
  # FSDP alone: the largest divisible axis, the width one on a tie, never the layer axis
  assert param_spec(("block_scan", "attn", "W_o"), (8, 64, 64), fsdp=8, fsdp_min_size=0) == \
      P(None, None, "fsdp")
  assert param_spec(("block_scan", "norm1", "scale"), (8, 30), fsdp=8, fsdp_min_size=0) == P()
  assert param_spec(("head", "kernel"), (64, 10), fsdp=8, fsdp_min_size=0) == P("fsdp")
  assert param_spec(("head", "kernel"), (64, 10), fsdp=8, fsdp_min_size=1024) == P()
  # heads that do not divide the model axis stay whole
  assert param_spec(("attn", "W_q"), (48, 48), fsdp=1, model=5) == P()


def test_optimizer_state_follows_its_parameter():
  import jax
  import jax.numpy as jnp
  import optax
  from jax.sharding import PartitionSpec as P
  from attn_jax.train import optim, sharding
  params = {"block_scan": {"attn": {"W_q": jnp.zeros((2, 16, 16)), "b_q": jnp.zeros((2, 16))}},
            "head": {"kernel": jnp.zeros((16, 8)), "bias": jnp.zeros(8)}}
  tx = optax.MultiSteps(optax.chain(optax.clip_by_global_norm(1.0),
                                    optax.adamw(1e-3, weight_decay=0.1, mask=optim.decay_mask)),
                        every_k_schedule=2)
  state = jax.eval_shape(tx.init, params)
  specs = jax.tree_util.tree_map_with_path(
      lambda path, x: sharding.param_spec(tuple(sharding._key_name(k) for k in path), x.shape,
                                          fsdp=8, fsdp_min_size=0), params)
  got = sharding.follow_params(state, params, specs)
  flat = {jax.tree_util.keystr(p): s for p, s in jax.tree_util.tree_leaves_with_path(
      got, is_leaf=lambda s: isinstance(s, P))}
  for moment in ("mu", "nu"):
    key = next(k for k in flat if f".{moment}['block_scan']['attn']['W_q']" in k)
    assert flat[key] == P(None, "fsdp"), key
  assert flat[next(k for k in flat if "acc_grads['head']['kernel']" in k)] == P("fsdp")
  assert all(s == P() for k, s in flat.items() if "count" in k or "mini_step" in k)


def test_config_mesh_is_validated_against_the_devices():
  from attn_jax.train import config as config_lib
  c = config_lib.base_config()
  c.mesh.fsdp, c.batch_size, c.eval_batch_size = 4, 8, 8
  config_lib.validate(c)                  # devices unknown: nothing device-dependent checked
  config_lib.validate(c, 8)               # data=2 x fsdp=4 = 8 batch shards
  c.mesh.model = 2
  config_lib.validate(c, 8)               # data=1 x fsdp=4 = 4 batch shards, 8 divides
  for change, n, msg in ((dict(fsdp=3, model=1), 8, "does not divide"),
                         (dict(data=3, fsdp=1, model=1), 8, "there are 8"),
                         (dict(data=-1, fsdp=16, model=1), 16, "batch_size=8")):
    for k, v in change.items():
      c.mesh[k] = v
    with pytest.raises(config_lib.ConfigError, match=msg):
      config_lib.validate(c, n)
  c.mesh.fsdp, c.strategy = 1, "pmap"
  config_lib.validate(c, 8)               # default mesh: pmap fine
  c.mesh.model = 2
  with pytest.raises(config_lib.ConfigError, match="strategy='jit'"):
    config_lib.validate(c, 8)
  assert "mesh.fsdp" in config_lib.key_meanings()


def _main(argv):
  mode, data, base = argv[:3]
  import jax
  if mode == "eight":
    assert jax.device_count() == 8
    return eight_devices(data, base)
  if mode == "four":
    assert jax.device_count() == 4
    return four_devices(data, base)
  pid, port = int(argv[3]), int(argv[4])
  two_processes(data, base, pid, port)


if __name__ == "__main__":
  sys.path.insert(0, HERE)
  _main(sys.argv[1:])
