"""The environment of the child processes the tests start (CLI runs, simulated devices).

Test programs are small and compiled once, so XLA's LLVM optimisation of the generated
code costs more than it saves: the tests run with `--xla_backend_optimization_level=0`,
which compiles ~30% faster. Results can differ from the default level in the last bits
(unvectorised code sums in another order), so every process of a test run, children
included, uses the same level and bit-exact comparisons stay valid.
conftest.py puts the flag in this process's XLA_FLAGS; children get it from `child_env`
together with their own flags, never an XLA_FLAGS inherited from the caller's shell.
"""
from __future__ import annotations

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def child_env(devices: int | None = None, *flags: str, fast_compile: bool = True,
              **extra: str) -> dict[str, str]:
  """os.environ with the repo on PYTHONPATH, CPU only, and XLA_FLAGS = the test flag (unless
  `fast_compile` is False), then `devices` simulated host devices (when given), then `flags`;
  `extra` overrides the rest."""
  xla = ([TEST_XLA_FLAGS] if fast_compile else []) + (
      [f"--xla_force_host_platform_device_count={devices}"] if devices else []) + list(flags)
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(xla),
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.update(extra)
  return env
