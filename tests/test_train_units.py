"""Optimizer, schedule, weight-decay mask, gradient accumulation and the TensorBoard writer."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from attn_jax.train import config as config_lib
from attn_jax.train import optim
from attn_jax.train import step as step_lib
from attn_jax.train.tasks import CLASSIFICATION
from attn_jax.train.models import MLPClassifier


def optim_cfg(**kw):
  c = config_lib.base_config().optim
  for k, v in kw.items():
    c[k] = v
  return c


def test_warmup_then_cosine_and_linear():
  s = optim.learning_rate_schedule(optim_cfg(learning_rate=1.0, warmup_steps=10,
                                             schedule="cosine", end_lr_factor=0.1), 110)
  np.testing.assert_allclose([s(0), s(5), s(10), s(60), s(110)], [0, 0.5, 1.0, 0.55, 0.1],
                             atol=1e-6)
  s = optim.learning_rate_schedule(optim_cfg(learning_rate=2.0, schedule="linear"), 100)
  np.testing.assert_allclose([s(0), s(50), s(100)], [2.0, 1.0, 0.0], atol=1e-6)


def test_weight_decay_mask_skips_biases_norms_and_embeddings():
  params = {"Dense_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)},
            "LayerNorm_0": {"scale": jnp.ones(4), "bias": jnp.ones(4)},
            "pos_embedding": jnp.ones((1, 5, 4)), "cls": jnp.ones((1, 1, 4)),
            "attn": {"W_q": jnp.ones((4, 4)), "b_q": jnp.ones(4)}}
  mask = optim.decay_mask(params)
  assert mask["Dense_0"] == {"kernel": True, "bias": False}
  assert mask["LayerNorm_0"] == {"scale": False, "bias": False}
  assert not mask["pos_embedding"] and not mask["cls"]
  assert mask["attn"] == {"W_q": True, "b_q": False}
  # AdamW with zero gradients only decays the masked-in leaves.
  tx, _ = optim.make_optimizer(optim_cfg(learning_rate=0.1, weight_decay=0.5, schedule="constant"), 10)
  upd, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  assert float(upd["Dense_0"]["kernel"][0, 0]) == pytest.approx(-0.05)
  assert float(upd["Dense_0"]["bias"][0]) == 0.0 and float(upd["pos_embedding"].sum()) == 0.0


def _mlp_state(tx):
  model = MLPClassifier(num_classes=3, widths=(8,))
  batch = {"image": np.random.default_rng(0).normal(size=(16, 4, 4, 1)).astype(np.float32),
           "label": np.arange(16, dtype=np.int32) % 3}
  return model, step_lib.init_state(model, CLASSIFICATION, tx, batch, 0), batch


def test_gradient_accumulation_equals_the_big_batch(name="adamw"):
  """optax.MultiSteps over 2 micro-batches of 8 == one step on the batch of 16."""
  big_tx, sched = optim.make_optimizer(optim_cfg(name=name, learning_rate=0.1, grad_clip_norm=1.0), 4)
  acc_tx, _ = optim.make_optimizer(optim_cfg(name=name, learning_rate=0.1, grad_clip_norm=1.0,
                                             grad_accum_steps=2), 8)
  model, s_big, batch = _mlp_state(big_tx)
  _, s_acc, _ = _mlp_state(acc_tx)
  big = jax.jit(step_lib.make_train_step(model, CLASSIFICATION, big_tx, sched, 0.0))
  acc = jax.jit(step_lib.make_train_step(model, CLASSIFICATION, acc_tx, sched, 0.0, accum=2))
  s_big, m = big(s_big, batch)
  half = lambda sl: jax.tree.map(lambda x: x[sl], batch)
  s_acc, m1 = acc(s_acc, half(slice(0, 8)))
  same = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), s_acc.params, _mlp_state(acc_tx)[1].params)
  assert all(jax.tree.leaves(same))                      # no update after the first micro-step
  s_acc, _ = acc(s_acc, half(slice(8, 16)))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               s_acc.params, s_big.params)
  assert float(m["grad_norm"]) > 0 and float(m["learning_rate"]) == pytest.approx(0.1, rel=0.3)


def test_eval_sums_ignore_padding():
  tx, _ = optim.make_optimizer(optim_cfg(), 1)
  model, state, batch = _mlp_state(tx)
  ev = jax.jit(step_lib.make_eval_step(model, CLASSIFICATION, 0.0))
  full = ev(state, {**batch, "mask": np.ones(16, np.float32)})
  junk = {"image": np.concatenate([batch["image"], 100 * np.ones_like(batch["image"][:4])]),
          "label": np.concatenate([batch["label"], np.zeros(4, np.int32)]),
          "mask": np.concatenate([np.ones(16, np.float32), np.zeros(4, np.float32)])}
  padded = ev(state, junk)
  for k in full:
    np.testing.assert_allclose(padded[k], full[k], rtol=1e-6)
  assert float(padded["examples"]) == 16

def test_tensorboard_events_parse_as_event_protos(tmp_path):
  """Our dependency-free writer's records are valid TFRecords of tensorboard Event protos."""
  event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")
  from attn_jax.train.tbevents import EventWriter, read_tfrecords
  w = EventWriter(str(tmp_path))
  w.scalars(7, {"loss": 0.25, "eval/accuracy": 0.5})
  w.scalars(-1, {"x": -3.0})
  w.close()
  events = [event_pb2.Event.FromString(r) for r in read_tfrecords(w.path)]
  assert events[0].file_version == "brain.Event:2"
  assert events[1].step == 7 and [(v.tag, v.simple_value) for v in events[1].summary.value] == [
      ("loss", 0.25), ("eval/accuracy", 0.5)]
  assert events[2].step == -1 and events[2].summary.value[0].simple_value == -3.0
  assert abs(events[1].wall_time - events[0].wall_time) < 60


def test_checkpointer_keeps_last_k_plus_best(tmp_path):
  from attn_jax.train.checkpoint import Checkpointer
  ck = Checkpointer(str(tmp_path), keep=2, best_metric="eval_accuracy", async_save=True)
  acc = {1: 0.5, 2: 0.9, 3: 0.6, 4: 0.7, 5: 0.8}
  for s in range(1, 6):
    ck.save(s, {"w": np.full(3, s, np.float32)}, {"step": s}, metrics={"eval_accuracy": acc[s]})
  ck.wait()
  assert ck.all_steps() == [2, 4, 5] and ck.best_step() == 2
  state, data, step = ck.restore({"w": np.zeros(3, np.float32)})
  assert step == 5 and data == {"step": 5} and state["w"].tolist() == [5, 5, 5]
  ck.close()
