"""The entry points' error convention: the project's errors print as at most 3 lines naming
the key or file, exit status 2; `--debug` shows the traceback; `--help` lists config keys;
evaluate needs only `--workdir` (the run's config is saved there)."""
import os
import subprocess
import sys
import time

import pytest

from child_env import child_env
from test_faults import ROOT, child, width_key, write_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  from test_data_readers import make_idx_folder
  return make_idx_folder(str(tmp_path_factory.mktemp("cli") / "mnist"))


def run(module, *args, env_extra=None, timeout=180):
  env = child_env(**(env_extra or {}))
  p = subprocess.run([sys.executable, "-m", f"experiments.{module}", *map(str, args)],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
  lines = [line for line in (p.stdout + p.stderr).splitlines() if line.strip()]
  return p.returncode, lines


def assert_error(rc, lines, *needles):
  text = "\n".join(lines)
  assert rc == 2, text[-3000:]
  assert len(lines) <= 3, text[-3000:]
  assert "Traceback" not in text
  for n in needles:
    assert n in text, text


@pytest.mark.parametrize("module", ["train", "evaluate", "visualize"])
def test_unknown_key_with_did_you_mean(module, tmp_path):
  assert_error(*run(module, "--config.optim.lerning_rate=1", f"--workdir={tmp_path}"),
               "--config.optim.lerning_rate: unknown key", "did you mean 'learning_rate'")
  if module == "train":   # the three share the override check; one run for a top-level key
    assert_error(*run(module, "--config.foo=1", f"--workdir={tmp_path}"),
                 "--config.foo: unknown key 'foo'")


def test_missing_config_file(tmp_path):
  assert_error(*run("train", "--config=configs/nope.py", f"--workdir={tmp_path}"),
               "configs/nope.py not found")


@pytest.mark.parametrize("override,needle", [
    ("--config.optim.learning_rate=-1", "config.optim.learning_rate=-1.0 must be > 0"),
    ("--config.optim.learning_rate=nan", "config.optim.learning_rate=nan must be a finite"),
    ("--config.optim.b2=1.5", "config.optim.b2=1.5 must be >= 0.0 and < 1.0"),
    ("--config.strategy=tpu", "config.strategy='tpu'")])
def test_config_errors_are_one_line(override, needle, tmp_path):
  assert_error(*run("train", override, f"--workdir={tmp_path}"), needle)
  assert not os.path.exists(tmp_path / "checkpoints")


def test_data_error_names_the_file(tmp_path):
  tsv = tmp_path / "pairs.tsv"
  tsv.write_text("ein hund\ta dog\nnur eine spalte\n")
  args = ["--config.data.source=tsv", f"--config.data.train_files={tsv}",
          f"--config.data.eval_files={tsv}", f"--workdir={tmp_path / 'w'}"]
  assert_error(*run("train", *args), f"{tsv}: line 2 has 1 columns; need column 1")


def test_checkpoint_error_names_the_folder(tmp_path):
  assert_error(*run("evaluate", f"--workdir={tmp_path / 'never_trained'}"),
               "never_trained/checkpoints: no such folder")


def test_nonfinite_loss_stops_with_exit_2_naming_the_step(data, tmp_path):
  cfg = write_config(tmp_path / "c.py", data, num_steps=50)
  rc, lines = run("train", f"--config={cfg}", f"--workdir={tmp_path / 'w'}",
                  "--config.optim.learning_rate=1e30")
  assert_error(rc, lines, "step ", "not finite", "config.optim.skip_nonfinite")


def test_second_process_on_a_workdir_refuses(data, tmp_path):
  wd = tmp_path / "w"
  holder = child("hold_lock", wd)
  try:
    assert holder.stdout.readline().strip() == "locked"
    cfg = write_config(tmp_path / "c.py", data)
    assert_error(*run("train", f"--config={cfg}", f"--workdir={wd}"),
                 f"is in use by pid {holder.pid} on ")
  finally:
    holder.kill()
    holder.communicate(timeout=30)


def test_failed_save_exits_within_seconds_with_one_line(data, tmp_path):
  cfg = write_config(tmp_path / "c.py", data, num_steps=20, checkpoint_every=5)
  code = ("import shutil, runpy, sys\n"
          "real = shutil.disk_usage\n"
          "shutil.disk_usage = lambda p: real(p)._replace(free=1000)\n"
          f"sys.argv = ['train', '--config={cfg}', '--workdir={tmp_path / 'w'}']\n"
          "runpy.run_module('experiments.train', run_name='__main__', alter_sys=True)\n")
  env = child_env()
  t0 = time.time()
  p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=120)
  lines = [line for line in (p.stdout + p.stderr).splitlines() if line.strip()]
  assert_error(p.returncode, lines, "cannot save checkpoints in", "/w/checkpoints: disk full")
  assert time.time() - t0 < 60


def test_debug_shows_the_traceback(tmp_path):
  rc, lines = run("train", "--config.optim.learning_rate=-1", f"--workdir={tmp_path}", "--debug")
  assert rc != 0 and any("Traceback" in line for line in lines)
  assert "ConfigError" in lines[-1]


def test_help_lists_config_keys_with_defaults_and_meanings():
  rc, lines = run("train", "--help")
  text = "\n".join(lines)
  assert rc == 0
  assert "--workdir" in text
  assert "--config.optim.learning_rate=" in text and "peak learning rate" in text
  assert "--config.data.src_column=0" in text and "tsv: column of the source" in text


def test_evaluate_needs_only_the_workdir_and_refuses_another_model(data, tmp_path):
  wd = tmp_path / "w"
  cfg = write_config(tmp_path / "c.py", data, **{f"model.{width_key()}": (16,)})
  rc, lines = run("train", f"--config={cfg}", f"--workdir={wd}")
  assert rc == 0, lines
  rc, lines = run("evaluate", f"--workdir={wd}")          # no config, no overrides
  assert rc == 0, lines[-20:]
  assert any('"eval_accuracy"' in line for line in lines)
  other = write_config(tmp_path / "o.py", data)            # hidden (32,): another model
  assert_error(*run("evaluate", f"--config={other}", f"--workdir={wd}"),
               f"model.{width_key()}: saved (16,), now (32,)")
  assert_error(*run("train", f"--config={other}", f"--workdir={wd}", "--config.num_steps=9"),
               "cannot resume", f"model.{width_key()}")
