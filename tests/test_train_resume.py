"""Preemption and exact resume: SIGTERM saves and exits 0; a run killed with SIGKILL
and restarted ends with bit-identical parameters to an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from child_env import child_env

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
STEPS = 120


def config(data):
  from test_train_loop import tiny_config
  # Dropout makes the run depend on the saved PRNG key as well as params and data order.
  c = tiny_config(data, num_steps=STEPS, checkpoint_every=20, log_every=10, eval_every=STEPS,
                  keep_checkpoints=3, **{"data.crop_padding": 1, "optim.name": "adamw",
                                         "optim.weight_decay": 0.01})
  c.model.dropout_rate = 0.2
  return c


def train(data, workdir):
  from attn_jax.train.loop import train_and_evaluate
  from test_train_parallel import flat_params
  out = train_and_evaluate(config(data), workdir)
  np.savez(os.path.join(workdir, "params.npz"), **flat_params(out["state"].params))
  return out


def start(data, workdir):
  env = child_env()
  return subprocess.Popen([sys.executable, __file__, data, workdir], env=env, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def saved_steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def wait_for_checkpoint_after(proc, workdir, step, timeout=120):
  t0 = time.time()
  while time.time() - t0 < timeout:
    if any(s > step for s in saved_steps(workdir)):
      return
    if proc.poll() is not None:
      raise AssertionError("run ended before the signal:\n" + proc.stdout.read()[-3000:])
    time.sleep(0.01)
  raise AssertionError("no checkpoint appeared")


def test_sigterm_then_sigkill_then_resume_is_bit_identical(tmp_path):
  from test_data_readers import make_idx_folder
  data = make_idx_folder(str(tmp_path / "data"))
  wd, ref = str(tmp_path / "interrupted"), str(tmp_path / "straight")
  straight = start(data, ref)   # the uninterrupted run, alongside
  # 1. SIGTERM after the first checkpoint: saves where it stopped and exits 0.
  p = start(data, wd)
  wait_for_checkpoint_after(p, wd, 0)
  p.send_signal(signal.SIGTERM)
  out, _ = p.communicate(timeout=120)
  assert p.returncode == 0, out[-3000:]
  assert "stopped by SIGTERM" in out
  stopped = saved_steps(wd)[-1]
  assert stopped < STEPS
  logged = [r["step"] for r in map(json.loads, open(os.path.join(wd, "metrics.jsonl")))]
  assert logged[-1] == stopped          # the step it stopped at was logged and saved
  # 2. Restart, then SIGKILL after it has saved a newer checkpoint (no chance to clean up).
  p = start(data, wd)
  wait_for_checkpoint_after(p, wd, stopped)
  p.kill()
  p.communicate(timeout=60)
  assert p.returncode == -signal.SIGKILL
  killed_at = saved_steps(wd)[-1]
  assert stopped < killed_at < STEPS
  # 3. Restart and finish.
  p = start(data, wd)
  out, _ = p.communicate(timeout=120)
  assert p.returncode == 0, out[-3000:]
  out, _ = straight.communicate(timeout=120)
  assert straight.returncode == 0, out[-3000:]
  a, b = np.load(os.path.join(ref, "params.npz")), np.load(os.path.join(wd, "params.npz"))
  assert a.files == b.files
  for k in a.files:
    assert np.array_equal(a[k], b[k]), k   # bit-identical
  assert saved_steps(wd)[-1] == STEPS


if __name__ == "__main__":
  sys.path.insert(0, HERE)
  train(*sys.argv[1:3])
