"""Training: config schema, optax optimizers, train/eval steps, mesh + pmap strategies,
Orbax checkpoints, metric writers and the loop (`train_and_evaluate`).

Submodules are imported on use (`from attn_jax.train.loop import train_and_evaluate`), so
importing `attn_jax` does not pull in orbax or grain.
"""
