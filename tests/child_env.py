"""The environment of the child processes the tests start (CLI runs, simulated devices).

Children never inherit an XLA_FLAGS from the caller's shell: each gets exactly the flags its
test names, so a test means the same on every machine. (`--xla_backend_optimization_level=0`
would compile ~30% faster but miscompiles: a CBAM-ResNet's gradients turn NaN after a few
AdamW steps on XLA:CPU, so the tests run the default level users run.)
"""
from __future__ import annotations

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_env(devices: int | None = None, *flags: str, **extra: str) -> dict[str, str]:
  """os.environ with the repo on PYTHONPATH, CPU only, and XLA_FLAGS = `devices` simulated
  host devices (when given), then `flags`; `extra` overrides the rest."""
  xla = ([f"--xla_force_host_platform_device_count={devices}"] if devices else []) + list(flags)
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(xla),
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.update(extra)
  return env
