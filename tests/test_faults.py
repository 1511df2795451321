"""Fault injection on the training runner: kill -9 at random points, corrupted checkpoints,
NaN midway, two writers, failed saves, signals during setup and training."""
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from child_env import child_env

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def tiny(data, **overrides):
  from test_train_loop import tiny_config
  return tiny_config(data, **overrides)


def width_key() -> str:
  """The MLP's hidden-width key in `tiny_config` ('widths' or 'hidden', whichever it sets)."""
  return next(k for k in ("widths", "hidden") if k in tiny("x").model)


def set_model_key(c, value, *names) -> None:
  """Sets the first of `names` that the model accepts (attribute names differ by version)."""
  from attn_jax.train import models
  for name in names:
    trial = c.model.copy_and_resolve_references()
    trial[name] = value
    try:
      models.check_model_keys(trial)
    except ValueError:
      continue
    c.model[name] = value
    return
  raise AssertionError(f"the model takes none of {names}")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  from test_data_readers import make_idx_folder
  return make_idx_folder(str(tmp_path_factory.mktemp("faults") / "mnist"))


def write_config(path, data, **overrides) -> str:
  """A config file for the entry points: `tiny_config(data, **overrides)`."""
  with open(path, "w") as f:
    f.write(f"import sys\nsys.path.insert(0, {HERE!r})\n\n\ndef get_config():\n"
            f"  from test_train_loop import tiny_config\n"
            f"  return tiny_config({str(data)!r}, **{overrides!r})\n")
  return str(path)


def child(*args, env_extra=None):
  """This file run as a script (see `__main__` below), output captured."""
  env = child_env(**(env_extra or {}))
  return subprocess.Popen([sys.executable, __file__, *map(str, args)], env=env, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def steps_on_disk(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def metric_lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def wait_until(pred, proc, timeout=120):
  t0 = time.time()
  while time.time() - t0 < timeout:
    if pred():
      return True
    if proc.poll() is not None:
      return False
    time.sleep(0.01)
  raise AssertionError("timed out")


# ----- kill -9 ------------------------------------------------------------------------------

KILL_STEPS = 400


def kill_config(data):
  c = tiny(data, num_steps=KILL_STEPS, checkpoint_every=20, log_every=5, eval_every=100,
           keep_checkpoints=3, **{"optim.name": "adamw", "optim.weight_decay": 0.01,
                                  "data.crop_padding": 1})
  set_model_key(c, 0.2, "dropout_rate", "dropout")   # the run then depends on the PRNG key
  return c


def train_to_npz(data, workdir):
  from attn_jax.train.loop import train_and_evaluate
  from test_train_parallel import flat_params
  out = train_and_evaluate(kill_config(data), workdir)
  np.savez(os.path.join(workdir, "params.npz"), **flat_params(out["state"].params))


@pytest.mark.slow
def test_kill9_at_random_points_resumes_bit_exact_without_duplicate_metrics(data, tmp_path):
  wd, ref = str(tmp_path / "killed"), str(tmp_path / "straight")
  straight = child("train", data, ref)
  rng, kills = random.Random(21), 0
  for _ in range(3):
    p = child("train", data, wd)
    seen = steps_on_disk(wd)[-1] if steps_on_disk(wd) else 0
    wait_until(lambda: any(s > seen for s in steps_on_disk(wd)), p)
    time.sleep(rng.uniform(0.0, 0.15))   # anywhere: mid-step, mid-log, mid-save
    if p.poll() is None:
      p.kill()
      kills += 1
    p.communicate(timeout=60)
  assert kills >= 3
  assert steps_on_disk(wd)[-1] < KILL_STEPS
  p = child("train", data, wd)
  out, _ = p.communicate(timeout=180)
  assert p.returncode == 0, out[-3000:]
  out, _ = straight.communicate(timeout=180)
  assert straight.returncode == 0, out[-3000:]
  a, b = np.load(os.path.join(ref, "params.npz")), np.load(os.path.join(wd, "params.npz"))
  for k in a.files:
    assert np.array_equal(a[k], b[k]), k      # bit-identical to the uninterrupted run
  train_a = [(r["step"], r["loss"]) for r in metric_lines(ref) if "loss" in r]
  train_b = [(r["step"], r["loss"]) for r in metric_lines(wd) if "loss" in r]
  assert train_b == train_a                    # every step once, nothing lost, same values
  evals = [r["step"] for r in metric_lines(wd) if "eval_loss" in r]
  assert evals == sorted(set(evals))


# ----- corrupted checkpoints ----------------------------------------------------------------

def corrupt(step_dir, how):
  if how == "truncated":
    files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state"))
             for f in fs if os.sep + "d" + os.sep in os.path.join(r, f) + os.sep]
    biggest = max(files, key=os.path.getsize)
    with open(biggest, "r+b") as f:
      f.truncate(10)
  elif how == "garbage_metadata":
    for name in ("_CHECKPOINT_METADATA", os.path.join("state", "_METADATA")):
      with open(os.path.join(step_dir, name), "w") as f:
        f.write("{not json")
  elif how == "missing_item":
    import shutil
    shutil.rmtree(os.path.join(step_dir, "data"))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax threads
@pytest.mark.parametrize("how", ["truncated", "garbage_metadata", "missing_item"])
def test_corrupt_latest_checkpoint_is_moved_aside_and_the_previous_restored(data, tmp_path, capfd,
                                                                           how):
  from attn_jax.train.loop import train_and_evaluate
  wd = str(tmp_path / "w")
  train_and_evaluate(tiny(data, num_steps=10, checkpoint_every=5, keep_checkpoints=3), wd)
  assert steps_on_disk(wd) == [5, 10]
  corrupt(os.path.join(wd, "checkpoints", "10"), how)
  capfd.readouterr()
  out = train_and_evaluate(tiny(data, num_steps=12, checkpoint_every=5, keep_checkpoints=3), wd)
  err = capfd.readouterr().err
  warnings = [line for line in err.splitlines() if line.strip()]
  assert len(warnings) == 1, err                      # one line, no traceback
  assert "checkpoints/10 cannot be read" in warnings[0] and "moved to" in warnings[0]
  moved = os.listdir(os.path.join(wd, "checkpoints.unreadable"))
  assert len(moved) == 1 and moved[0].startswith("10-")   # kept, not deleted
  assert out["step"] == 12 and steps_on_disk(wd) == [5, 10, 12]
  steps = [r["step"] for r in metric_lines(wd) if "loss" in r]
  assert steps == list(range(1, 13))                  # cut back to 5, then 6..12 once


def test_no_readable_checkpoint_is_a_clear_error(data, tmp_path):
  from attn_jax.train.errors import CheckpointError
  from attn_jax.train.loop import train_and_evaluate
  wd = str(tmp_path / "w")
  train_and_evaluate(tiny(data, num_steps=5, checkpoint_every=5), wd)
  corrupt(os.path.join(wd, "checkpoints", "5"), "missing_item")
  with pytest.raises(CheckpointError, match=r"no readable checkpoint"):
    train_and_evaluate(tiny(data, num_steps=10, checkpoint_every=5), wd)
  assert os.listdir(os.path.join(wd, "checkpoints.unreadable"))[0].startswith("5-")


# ----- NaN midway ---------------------------------------------------------------------------

def poison_optimizer(monkeypatch, at_step):
  """The learning rate turns NaN at training step `at_step` (the state keeps its structure)."""
  import jax.numpy as jnp

  from attn_jax.train import optim
  real = optim.learning_rate_schedule

  def schedule(cfg, num_steps):
    base = real(cfg, num_steps)
    return lambda n: jnp.where(n >= at_step - 1, jnp.nan, base(n))
  monkeypatch.setattr(optim, "learning_rate_schedule", schedule)


@pytest.mark.parametrize("every,message", [(5, r"step 13: .*loss nan"),
                                           (4, r"step 12: the state to save holds NaN")])
def test_nan_midway_stops_and_keeps_the_finite_checkpoints(data, tmp_path, monkeypatch, every,
                                                          message):
  from attn_jax.train.errors import NonFiniteError
  from attn_jax.train.loop import train_and_evaluate
  poison_optimizer(monkeypatch, 12)        # params NaN after step 12, loss NaN at step 13
  wd = str(tmp_path / "w")
  cfg = tiny(data, num_steps=40, checkpoint_every=every, log_every=10, eval_every=40,
             keep_checkpoints=2)
  with pytest.raises(NonFiniteError, match=message) as e:
    train_and_evaluate(cfg, wd)
  assert "\n" not in str(e.value) and "the last checkpoint is" in str(e.value)
  kept = steps_on_disk(wd)
  assert kept == ([5, 10] if every == 5 else [4, 8])   # nothing NaN saved, nothing rotated out
  monkeypatch.undo()
  # a rerun without the fault resumes from the last finite checkpoint
  out = train_and_evaluate(tiny(data, num_steps=14, checkpoint_every=every, keep_checkpoints=2),
                           wd)
  assert out["step"] == 14 and np.isfinite(out["train"]["loss"])


def test_skip_policy_skips_nonfinite_updates_and_counts_them(data, tmp_path):
  from attn_jax.train.errors import NonFiniteError
  from attn_jax.train.loop import train_and_evaluate
  cfg = tiny(data, num_steps=6, log_every=6, **{"optim.learning_rate": 1e30,
                                                "optim.skip_nonfinite": 3})
  with pytest.raises(NonFiniteError, match=r"3 non-finite steps in a row"):
    train_and_evaluate(cfg, str(tmp_path / "w"))


# ----- two writers, stale lock --------------------------------------------------------------

def test_second_writer_refuses_and_a_stale_lock_is_taken_over(data, tmp_path, capfd):
  from attn_jax.train.errors import LockError
  from attn_jax.train.loop import train_and_evaluate
  wd = str(tmp_path / "w")
  holder = child("hold_lock", wd)
  assert holder.stdout.readline().strip() == "locked"
  with pytest.raises(LockError, match=rf"in use by pid {holder.pid} on \S+ since \d{{4}}-"):
    train_and_evaluate(tiny(data), wd)
  assert not os.path.exists(os.path.join(wd, "checkpoints"))   # refused before writing
  holder.kill()
  holder.communicate(timeout=30)
  capfd.readouterr()
  out = train_and_evaluate(tiny(data), wd)                     # the holder died: stale
  assert out["step"] == 5
  assert f"taking over a stale lock of pid {holder.pid}" in capfd.readouterr().err
  assert not os.path.exists(os.path.join(wd, "lock"))          # released at the end


# ----- failed saves -------------------------------------------------------------------------

def test_disk_full_stops_within_seconds_and_keeps_what_was_there(data, tmp_path, monkeypatch):
  import shutil

  from attn_jax.train import checkpoint as ckpt_lib
  from attn_jax.train.errors import SaveError
  from attn_jax.train.loop import train_and_evaluate
  real, calls = shutil.disk_usage, []

  def usage(path):
    calls.append(path)
    u = real(path)
    return u._replace(free=0) if len(calls) > 1 else u      # full after the first save
  monkeypatch.setattr(ckpt_lib.shutil, "disk_usage", usage)
  wd = str(tmp_path / "w")
  t0 = time.time()
  with pytest.raises(SaveError, match=r"checkpoints: disk full \(0.0 MiB free"):
    train_and_evaluate(tiny(data, num_steps=20, checkpoint_every=5), wd)
  assert time.time() - t0 < 30
  assert steps_on_disk(wd) == [5]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_injected_write_error_names_the_path_and_cause(data, tmp_path, monkeypatch):
  import orbax.checkpoint as ocp

  from attn_jax.train.errors import SaveError
  from attn_jax.train.loop import train_and_evaluate
  real, n = ocp.CheckpointManager.save, []

  def save(self, step, *a, **kw):
    n.append(step)
    if len(n) > 1:
      raise OSError(errno.ENOSPC, "No space left on device", f"{self.directory}/{step}")
    return real(self, step, *a, **kw)
  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  wd = str(tmp_path / "w")
  with pytest.raises(SaveError, match=r"cannot save checkpoint \S+/checkpoints/10: OSError: "
                                      r"No space left on device") as e:
    train_and_evaluate(tiny(data, num_steps=20, checkpoint_every=5), wd)
  assert "kept steps 5" in str(e.value)
  assert steps_on_disk(wd) == [5]
  assert not [n for n in os.listdir(os.path.join(wd, "checkpoints")) if "tmp" in n]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_checkpoint_folder_is_one_line(data, tmp_path):
  from attn_jax.train.errors import SaveError
  from attn_jax.train.loop import train_and_evaluate
  wd = tmp_path / "w"
  (wd / "checkpoints").mkdir(parents=True)
  os.chmod(wd / "checkpoints", 0o555)
  try:
    with pytest.raises(SaveError, match=r"checkpoints: Permission denied"):
      train_and_evaluate(tiny(data), str(wd))
  finally:
    os.chmod(wd / "checkpoints", 0o755)


# ----- signals ------------------------------------------------------------------------------

@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_signal_during_setup_exits_cleanly_with_nothing_half_written(data, tmp_path, sig, code):
  wd = str(tmp_path / "w")
  p = child("cli_slow_setup", write_config(tmp_path / "c.py", data), wd)
  assert p.stdout.readline().strip() == "in setup", p.stdout.read()
  p.send_signal(sig)
  out, _ = p.communicate(timeout=120)
  assert p.returncode == code, out[-3000:]
  assert f"stopped by {signal.Signals(sig).name} during setup" in out
  assert "Traceback" not in out
  assert sorted(os.listdir(wd)) == ["config.json"]   # no checkpoints, metrics or lock


def test_sigint_mid_run_saves_at_the_next_step_and_exits_130(data, tmp_path):
  wd = str(tmp_path / "w")
  cfg = write_config(tmp_path / "c.py", data, num_steps=100_000, checkpoint_every=50,
                     log_every=10, eval_every=100_000)
  p = child("cli", cfg, wd)
  wait_until(lambda: steps_on_disk(wd), p)
  p.send_signal(signal.SIGINT)
  out, _ = p.communicate(timeout=120)
  assert p.returncode == 130, out[-3000:]
  assert "stopped by SIGINT" in out and "Traceback" not in out
  last = steps_on_disk(wd)[-1]
  assert [r["step"] for r in metric_lines(wd)][-1] == last   # saved where it stopped


def test_resume_with_another_model_config_names_the_keys(data, tmp_path):
  from attn_jax.train.errors import MismatchError
  from attn_jax.train.loop import train_and_evaluate
  wd = str(tmp_path / "w")
  train_and_evaluate(tiny(data), wd)
  other = tiny(data, num_steps=10)
  other.model[width_key()] = (16,)
  with pytest.raises(MismatchError, match=rf"model.{width_key()}: saved \(32,\), now \(16,\)"):
    train_and_evaluate(other, wd)
  assert train_and_evaluate(tiny(data, num_steps=10), wd)["step"] == 10   # same model: fine


def _main(argv):
  sys.path.insert(0, HERE)
  mode = argv[0]
  if mode == "train":
    train_to_npz(argv[1], argv[2])
  elif mode == "hold_lock":
    from attn_jax.train.lock import WorkdirLock
    WorkdirLock(argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(600)
  elif mode in ("cli", "cli_slow_setup"):
    import runpy
    if mode == "cli_slow_setup":
      from attn_jax.data import sources
      real = sources.build

      def slow_build(*a, **kw):
        print("in setup", flush=True)
        time.sleep(3)
        return real(*a, **kw)
      sources.build = slow_build
    sys.argv = ["train", f"--config={argv[1]}", f"--workdir={argv[2]}"]
    runpy.run_module("experiments.train", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  _main(sys.argv[1:])
