"""Decoder-only LM: packing == padding, KV-cache sampling == teacher forcing, the runner."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.data import packing
from attn_jax.seq.lm import TransformerLM
from attn_jax.seq.sampling import filter_logits, sample
from attn_jax.train.tasks import LANGUAGE_MODEL


def _sentences(n, seed=0, vocab=20):
  rng = np.random.default_rng(seed)
  return [rng.integers(4, vocab, rng.integers(1, 9)).tolist() for _ in range(n)]


def test_pack_rows_layout():
  pairs = packing.lm_pairs([[5, 6], [7], [8, 9, 10]], length=6)
  rows = packing.pack_rows(pairs, 6)
  np.testing.assert_array_equal(rows["inputs"], [[1, 5, 6, 1, 7, 0], [1, 8, 9, 10, 0, 0]])
  np.testing.assert_array_equal(rows["targets"], [[5, 6, 2, 7, 2, 0], [8, 9, 10, 2, 0, 0]])
  np.testing.assert_array_equal(rows["segment_ids"], [[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 0, 0]])
  np.testing.assert_array_equal(rows["positions"], [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 0]])
  assert packing.fill_rate(rows) == pytest.approx(9 / 12)
  assert len(packing.pack_rows(pairs, 6, pack=False)["inputs"]) == 3
  with pytest.raises(ValueError, match="length"):
    packing.pack_rows(pairs, 2)


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_packed_loss_equals_padded_loss(position):
  pairs = packing.lm_pairs(_sentences(12), 16)
  packed, padded = packing.pack_rows(pairs, 16), packing.pack_rows(pairs, 16, pack=False)
  assert len(packed["inputs"]) < len(padded["inputs"])
  model = TransformerLM(vocab_size=20, width=32, depth=2, num_heads=4, mlp_dim=64,
                        position=position, dropout_rate=0.0, max_len=16)
  params = model.init(jax.random.key(0), jnp.asarray(packed["inputs"]))["params"]

  def nll(rows):
    batch = {k: jnp.asarray(v) for k, v in rows.items()}
    logits = LANGUAGE_MODEL.apply(model, {"params": params}, batch)
    s = LANGUAGE_MODEL.metric_sums(logits, batch, 0.0)
    return float(s["loss_sum"]), float(s["weight"])

  (a, wa), (b, wb) = nll(packed), nll(padded)
  assert wa == wb == sum(len(p[0]) for p in pairs)
  assert a == pytest.approx(b, rel=1e-5)


@pytest.mark.parametrize("opts", [{}, {"position": "rope", "num_kv_heads": 2, "window": 3,
                                       "softcap": 5.0, "scan_layers": True}])
def test_cached_sampling_equals_teacher_forcing(opts):
  model = TransformerLM(vocab_size=30, width=32, depth=2, num_heads=4, mlp_dim=64,
                        dropout_rate=0.0, max_len=32, **opts)
  prompt = jnp.array([[1, 5, 7], [1, 9, 4]], jnp.int32)
  params = model.init(jax.random.key(1), prompt)["params"]
  out = sample(model, params, prompt, 6, jax.random.key(2), temperature=1.0, top_k=10)
  assert out.tokens.shape == (2, 9) and out.logits.shape == (2, 6, 30)
  np.testing.assert_array_equal(out.tokens[:, :3], prompt)
  full = model.apply({"params": params}, out.tokens[:, :-1])
  np.testing.assert_allclose(out.logits, full[:, 2:], atol=2e-5, rtol=1e-4)
  greedy = sample(model, params, prompt, 6, jax.random.key(3), temperature=0)
  full = model.apply({"params": params}, greedy.tokens[:, :-1])
  np.testing.assert_array_equal(greedy.tokens[:, 3:], jnp.argmax(full[:, 2:], -1))


def test_filter_logits_top_k_and_top_p():
  logits = jnp.log(jnp.array([[0.5, 0.25, 0.15, 0.1]]))
  kept = lambda x: np.isfinite(np.asarray(x))[0].tolist()
  assert kept(filter_logits(logits, top_k=2)) == [True, True, False, False]
  assert kept(filter_logits(logits, top_p=0.7)) == [True, True, False, False]
  assert kept(filter_logits(logits, top_p=0.75)) == [True, True, False, False]
  assert kept(filter_logits(logits, top_p=0.76)) == [True, True, True, False]
  assert kept(filter_logits(logits, top_p=0.1)) == [True, False, False, False]
  shuffled = logits[:, ::-1]
  assert kept(filter_logits(shuffled, top_p=0.7)) == [False, False, True, True]
  with pytest.raises(ValueError, match="top_p"):
    filter_logits(logits, top_p=0.0)


def test_lm_config_trains_on_a_text_file(tmp_path):
  from attn_jax.train.loop import train_and_evaluate
  from configs import multi30k_lm
  text = tmp_path / "train.txt"
  text.write_text("\n".join(["a dog runs .", "a cat sits .", "two dogs run ."] * 40) + "\n")
  c = multi30k_lm.get_config()
  c.data.train_files = c.data.eval_files = str(text)
  c.data.seq_len = 32
  c.model.width, c.model.depth, c.model.num_heads, c.model.mlp_dim = 32, 1, 2, 64
  c.num_steps, c.eval_every, c.checkpoint_every, c.log_every = 80, 80, 80, 20
  c.batch_size, c.eval_batch_size, c.optim.warmup_steps, c.progress = 8, 8, 5, "off"
  out = train_and_evaluate(c, str(tmp_path / "w"))
  vocab = 4 + len(set("a dog runs . a cat sits . two dogs run ."))
  assert out["eval"]["eval_perplexity"] < vocab / 2   # uniform guessing: vocab
  lines = [json.loads(x) for x in open(tmp_path / "w" / "metrics.jsonl")]
  assert lines[-1]["eval_perplexity"] == pytest.approx(out["eval"]["eval_perplexity"])
  import subprocess
  import sys
  r = subprocess.run([sys.executable, "-m", "experiments.sample", "--workdir",
                      str(tmp_path / "w"), "--num=3", "--max_new_tokens=20", "--prompt=a d"],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  rec = json.load(open(tmp_path / "w" / "samples.json"))
  assert len(rec["samples"]) == 3 and all(t.startswith("a d") for t in rec["samples"])
  assert r.stdout.splitlines()[-3:] == rec["samples"]


@pytest.mark.parametrize("positions", ["learned"])   # sinusoidal / RoPE: the test below
def test_packed_seq2seq_loss_equals_padded_loss(positions):
  from attn_jax.data.pipeline import seq_collate
  from attn_jax.seq.transformer import Transformer
  from attn_jax.train.tasks import SEQ2SEQ
  src, tgt = _sentences(10, 1), _sentences(10, 2)
  examples = [{"src": np.array(s), "tgt": np.array(t)} for s, t in zip(src, tgt)]
  packed = packing.pack_pairs(examples, 24, 24)
  padded = seq_collate((12,))(examples, [])
  assert len(packed["src"]) < len(examples)
  model = Transformer(src_vocab=20, tgt_vocab=20, width=32, num_heads=4, mlp_dim=64, depth=2,
                      dropout_rate=0.0, positions=positions, max_len=24)
  params = model.init(jax.random.key(0), jnp.asarray(padded["src"]),
                      jnp.asarray(padded["tgt_in"]))["params"]

  def nll(batch):
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    s = SEQ2SEQ.metric_sums(SEQ2SEQ.apply(model, {"params": params}, batch), batch, 0.0)
    return float(s["loss_sum"]), float(s["weight"])

  (a, wa), (b, wb) = nll(packed), nll(padded)
  assert wa == wb == sum(len(t) + 1 for t in tgt)
  assert a == pytest.approx(b, rel=1e-5)


def test_packed_seq2seq_runner_and_config_check(tmp_path):
  from attn_jax.train.config import ConfigError, validate
  from attn_jax.train.loop import train_and_evaluate
  from configs import multi30k_transformer
  root = tmp_path / "txt"
  root.mkdir()
  rng = np.random.default_rng(0)
  words = ["ein", "hund", "mann", "läuft", "rot", "blau"]
  lines = [" ".join(rng.choice(words, rng.integers(2, 6))) for _ in range(64)]
  (root / "s.txt").write_text("\n".join(lines) + "\n")
  (root / "t.txt").write_text("\n".join(l.upper() for l in lines) + "\n")
  c = multi30k_transformer.get_config()
  c.data.source, c.data.min_freq, c.data.buckets = "pairs", 1, (8, 16)
  c.data.train_files = c.data.eval_files = f"{root}/s.txt,{root}/t.txt"
  c.data.pack = True
  c.model.width, c.model.depth, c.model.num_heads, c.model.mlp_dim = 16, 1, 2, 32
  c.num_steps, c.eval_every, c.checkpoint_every, c.log_every = 6, 6, 6, 3
  c.batch_size, c.eval_batch_size, c.optim.warmup_steps, c.progress = 4, 16, 2, "off"
  out = train_and_evaluate(c, str(tmp_path / "w"))
  assert out["eval"]["eval_examples"] == 64 and "exact_match" not in out["train"]
  from configs import multi30k_gru
  g = multi30k_gru.get_config()
  g.data.pack = True
  with pytest.raises(ConfigError, match="config.data.pack"):
    validate(g)


@pytest.mark.parametrize("opts", [{"positions": "rope", "num_kv_heads": 2, "softcap": 8.0}])
def test_transformer_variants_decode_equals_teacher_forcing_and_pack(opts):
  from attn_jax.data.pipeline import seq_collate
  from attn_jax.seq.decoding import greedy_decode
  from attn_jax.seq.transformer import Transformer
  from attn_jax.train.tasks import SEQ2SEQ
  model = Transformer(src_vocab=20, tgt_vocab=20, width=32, num_heads=4, mlp_dim=64, depth=1,
                      dropout_rate=0.0, max_len=32, **opts)
  examples = [{"src": np.array(s), "tgt": np.array(t)}
              for s, t in zip(_sentences(6, 3), _sentences(6, 4))]
  padded = seq_collate((12,))(examples, [])
  params = model.init(jax.random.key(0), jnp.asarray(padded["src"]),
                      jnp.asarray(padded["tgt_in"]))["params"]
  src = jnp.asarray(padded["src"])
  out = greedy_decode(model, params, src, 8)
  tgt_in = jnp.concatenate([jnp.ones((6, 1), jnp.int32), out.tokens[:, :-1]], axis=1)
  full = jax.jit(model.apply)({"params": params}, src, tgt_in)
  first_eos = np.argmax(np.asarray(out.tokens) == 2, axis=1)
  pred = np.asarray(jnp.argmax(full.at[..., :2].set(-jnp.inf), -1))   # never PAD / BOS
  for i in range(6):   # teacher forcing on the decoded prefix re-predicts it, up to EOS
    n = first_eos[i] if (np.asarray(out.tokens[i]) == 2).any() else 8
    np.testing.assert_array_equal(pred[i, :n], np.asarray(out.tokens[i, :n]))
  if opts.get("window") is None:   # a window spans tokens of neighbouring packed pairs
    packed = packing.pack_pairs(examples, 24, 24)

    @jax.jit
    def loss_sum(batch):
      return SEQ2SEQ.metric_sums(SEQ2SEQ.apply(model, {"params": params}, batch), batch,
                                 0.0)["loss_sum"]

    def nll(batch):
      return float(loss_sum({k: jnp.asarray(v) for k, v in batch.items()}))
    assert nll(packed) == pytest.approx(nll(padded), rel=1e-5)
