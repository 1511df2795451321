"""Own corpora (TSV columns, the word tokenizer's BLEU ceiling), progress lines without a
TTY, metrics cut back on resume, and the config's range checks."""
import json
import os

import pytest

from attn_jax.data import sources
from attn_jax.data import text as T
from attn_jax.data.images import DataError
from attn_jax.train import config as config_lib
from attn_jax.train import metrics as metrics_lib

FRENCH = ["L'homme est arrivé l'après-midi.", "C'est aujourd'hui le grand-père.",
          "Qu'il vienne à l'école.", "Le chat-huant dort jusqu'à midi."]
ENGLISH = ["The man arrived in the afternoon.", "Today is the grandfather.",
           "Let him come to school.", "The tawny owl sleeps until noon."]


def tsv_config(path, **data):
  c = config_lib.base_config()
  c.data.source = "tsv"
  c.data.train_files = c.data.eval_files = str(path)
  c.data.min_freq = 1
  c.data.buckets = (32,)
  for k, v in data.items():
    c.data[k] = v
  return c


@pytest.fixture
def corpus(tmp_path):
  p = tmp_path / "en_fr.tsv"
  p.write_text("".join(f"{i}\t{e}\t{f}\n" for i, (e, f) in enumerate(zip(ENGLISH, FRENCH))))
  return p


def test_tsv_columns_serve_both_directions(corpus):
  assert T.read_tsv(str(corpus), 1, 2)[0] == (ENGLISH[0], FRENCH[0])
  assert T.read_tsv(str(corpus), 2, 1)[0] == (FRENCH[0], ENGLISH[0])
  data = sources.build(tsv_config(corpus, src_column=2, tgt_column=1))
  assert data.info["eval_text"][1] == (FRENCH[1], ENGLISH[1])
  with pytest.raises(DataError, match=r"line 1 has 3 columns; need column 5 "
                                       r"\(config.data.src_column=5"):
    T.read_tsv(str(corpus), 5, 1)
  with pytest.raises(config_lib.ConfigError, match=r"src_column and config.data.tgt_column "
                                                   r"are both 1"):
    config_lib.validate(tsv_config(corpus, src_column=1, tgt_column=1))


def test_word_tokenizer_warns_with_its_bleu_ceiling(corpus, capfd):
  data = sources.build(tsv_config(corpus, src_column=1, tgt_column=2))
  err = capfd.readouterr().err
  ceiling = data.info["bleu_ceiling"]
  assert ceiling < 60
  assert f"at most BLEU {ceiling:.1f}" in err and "tokenizer=sentencepiece" in err
  assert err.count("\n") == 1
  # English round-trips (almost) exactly: no warning
  data = sources.build(tsv_config(corpus, src_column=2, tgt_column=1))
  assert data.info["bleu_ceiling"] > 99 and "warning" not in capfd.readouterr().err


def test_sentencepiece_round_trips_french_exactly():
  sp = T.fit_tokenizer("sentencepiece", FRENCH * 20, vocab_size=60)
  assert [T.roundtrip(sp, s) for s in FRENCH] == FRENCH
  assert T.roundtrip_bleu(sp, FRENCH) > 99.9


def test_progress_lines_without_a_tty(capsys):
  p = metrics_lib.Progress(100, 0, "auto", every_s=1e-9)   # pytest's stderr is no TTY
  p.update(10, {"loss": 1.5})
  p.update(20, {"loss": 1.25})
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 2 and lines[1].startswith("step 20/100 ") and "loss=1.25" in lines[1]
  quiet = metrics_lib.Progress(100, 0, "off", every_s=1e-9)
  quiet.update(10)
  assert capsys.readouterr().err == ""


def _steps(path) -> list[int]:
  return [json.loads(line)["step"] for line in open(path) if line.strip()]


def test_metrics_cut_back_to_the_restored_step(tmp_path):
  path = tmp_path / "metrics.jsonl"
  rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 9)]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 9, "lo')  # torn line
  assert metrics_lib.truncate_jsonl(str(path), 5) == 4
  assert _steps(path) == [1, 2, 3, 4, 5]
  w = metrics_lib.MetricWriter(str(tmp_path), resume_step=3)
  w.write(4, {"loss": 0.5})
  w.close()
  assert _steps(path) == [1, 2, 3, 4]
  assert not os.path.exists(str(path) + ".tmp")


@pytest.mark.parametrize("key,value,needle", [
    ("optim.learning_rate", 0.0, "must be > 0.0"),
    ("optim.learning_rate", float("inf"), "must be a finite number"),
    ("optim.b1", -0.1, "must be >= 0.0 and < 1.0"),
    ("optim.weight_decay", -1.0, "must be >= 0.0"),
    ("optim.grad_clip_norm", float("nan"), "must be a finite number"),
    ("optim.end_lr_factor", 2.0, "must be >= 0.0 and <= 1.0"),
    ("optim.skip_nonfinite", -1, "must be >= 0"),
    ("data.min_freq", 0, "must be >= 1"),
    ("progress_every_s", -1.0, "must be >= 0.0")])
def test_nonsensical_numbers_are_rejected(key, value, needle):
  c = config_lib.base_config()
  section, leaf = key.rsplit(".", 1) if "." in key else ("", key)
  (c[section] if section else c)[leaf] = value
  with pytest.raises(config_lib.ConfigError, match=rf"config.{key}=.* {needle}"):
    config_lib.validate(c)


def test_unknown_key_suggests_the_closest():
  c = config_lib.base_config()
  c.optim.lerning_rate = 0.1
  with pytest.raises(config_lib.ConfigError, match=r"did you mean 'learning_rate'"):
    config_lib.validate(c)
