"""Local data readers and the grain pipeline: what they read, how they fail, determinism."""
import gzip
import io
import os
import struct
import tarfile

import numpy as np
import pytest
from PIL import Image

from attn_jax.data import images as I
from attn_jax.data import pipeline as P
from attn_jax.data import text as T

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                      "data")


def write_idx(path, array):
  """Writes a uint8 IDX file (gzipped when the name ends in .gz)."""
  array = np.asarray(array, np.uint8)
  data = bytes([0, 0, 8, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
  data += array.tobytes()
  with (gzip.open if path.endswith(".gz") else open)(path, "wb") as f:
    f.write(data)


def make_idx_folder(root, n_train=64, n_test=20, size=8, classes=4, seed=0):
  """An MNIST-style folder whose images are learnable (class = bright quadrant)."""
  rng = np.random.default_rng(seed)
  os.makedirs(root, exist_ok=True)
  for prefix, n in (("train", n_train), ("t10k", n_test)):
    labels = rng.integers(0, classes, n)
    imgs = rng.integers(0, 60, (n, size, size))
    h = size // 2
    for i, c in enumerate(labels):
      r, q = divmod(int(c), 2)
      imgs[i, r * h:(r + 1) * h, q * h:(q + 1) * h] += 150
    write_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte.gz"), imgs)
    write_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte.gz"), labels)
  return root


def make_image_folder(root, n_per_class=3, classes=("cat", "dog"), size=8):
  for split in ("train", "test"):
    for k, cls in enumerate(classes):
      os.makedirs(os.path.join(root, split, cls), exist_ok=True)
      for i in range(n_per_class):
        arr = np.full((size, size, 3), 40 + 150 * k, np.uint8)
        Image.fromarray(arr).save(os.path.join(root, split, cls, f"{i:04d}.png"))
  return root


def test_idx_roundtrip_and_truncation(tmp_path):
  root = make_idx_folder(str(tmp_path / "mnist"))
  src = I.load_local_images(root, "train")
  assert len(src) == 64
  ex = src[3]
  assert ex["image"].shape == (8, 8, 1) and ex["image"].dtype == np.uint8
  assert 0 <= int(ex["label"]) < 4
  # Truncate the images file: the error names the file and the record where it ends.
  path = os.path.join(root, "train-images-idx3-ubyte.gz")
  with gzip.open(path) as f:
    data = f.read()
  with gzip.open(path, "wb") as f:
    f.write(data[:16 + 64 * 10 + 5])
  with pytest.raises(I.DataError, match=r"train-images-idx3-ubyte.gz: truncated.*record 10"):
    I.load_local_images(root, "train")
  with pytest.raises(I.DataError, match="not found"):
    I.read_idx(str(tmp_path / "missing-idx1-ubyte"))


def test_idx_count_mismatch(tmp_path):
  root = make_idx_folder(str(tmp_path / "m"))
  write_idx(os.path.join(root, "t10k-labels-idx1-ubyte.gz"), np.zeros(7))
  with pytest.raises(I.DataError, match="20 images but .*t10k-labels.* has 7 labels"):
    I.load_local_images(root, "test")


def test_image_folder_and_tar_agree(tmp_path):
  folder = make_image_folder(str(tmp_path / "imgs"))
  a = I.load_local_images(folder, "train")
  tar_path = str(tmp_path / "imgs.tar.gz")
  with tarfile.open(tar_path, "w:gz") as tar:
    tar.add(folder, arcname="prefix")
  b = I.load_local_images(tar_path, "train")
  assert a.classes == b.classes == ["cat", "dog"] and len(a) == len(b) == 6
  for i in range(6):
    np.testing.assert_array_equal(a[i]["image"], b[i]["image"])
    assert a[i]["label"] == b[i]["label"]
  assert a[0]["image"].shape == (8, 8, 3)
  # A corrupt image names its file.
  with open(os.path.join(folder, "train", "dog", "0001.png"), "wb") as f:
    f.write(b"not a png")
  src = I.load_local_images(folder, "train")
  with pytest.raises(I.DataError, match=r"train/dog/0001.png: cannot decode"):
    src[4]


def test_text_pairs_checks(tmp_path):
  src, tgt = tmp_path / "a.de", tmp_path / "a.en"
  src.write_text("ein Hund\nzwei Katzen\n")
  tgt.write_text("a dog\ntwo cats\n")
  assert T.read_pairs(str(src), str(tgt)) == [("ein Hund", "a dog"), ("zwei Katzen", "two cats")]
  tgt.write_text("a dog\n")
  with pytest.raises(I.DataError, match=r"a.de has 2 lines but .*a.en has 1"):
    T.read_pairs(str(src), str(tgt))
  bad = tmp_path / "bad.en"
  bad.write_bytes(b"fine\ncaf\xe9\n")
  with pytest.raises(I.DataError, match=r"bad.en: line 2 is not UTF-8"):
    T.read_lines(str(bad))
  tsv = tmp_path / "p.tsv"
  tsv.write_text("x\ty\nonly-one-column\n")
  with pytest.raises(I.DataError, match=r"p.tsv: line 2 has 1 columns"):
    T.read_tsv(str(tsv))
  with pytest.raises(I.DataError, match="not found"):
    T.read_lines(str(tmp_path / "nope.txt"))


def test_word_and_sentencepiece_tokenizers():
  texts = ["a dog runs.", "a cat runs", "the dog sleeps"] * 5 + ["rare"]
  tok = T.WordTokenizer.fit(texts, min_freq=2)
  assert tok.itos[:4] == list(T.SPECIALS)
  ids = tok.encode("A dog flies.")
  assert ids[2] == T.UNK and "rare" not in tok.stoi
  assert tok.decode(ids + [T.EOS, 7]) == "a dog <unk> ."
  sp = T.SentencePieceTokenizer.fit(texts * 10, vocab_size=30)
  enc = sp.encode("a dog runs.")
  assert all(i >= 4 for i in enc) and sp.decode(enc) == "a dog runs."


def test_seq_collate_buckets_and_shifts():
  collate = P.seq_collate((4, 8))
  local = [{"src": np.array([5, 6]), "tgt": np.array([7])},
           {"src": np.array([5, 6, 7, 8, 9]), "tgt": np.array([7, 8])}]
  out = collate(local[:1], local)   # the global batch decides the shape
  assert out["src"].shape == (1, 8) and out["tgt_in"].shape == (1, 4)
  np.testing.assert_array_equal(out["src"][0], [5, 6, T.EOS, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(out["tgt_in"][0], [T.BOS, 7, 0, 0])
  np.testing.assert_array_equal(out["tgt_out"][0], [7, T.EOS, 0, 0])


def test_train_stream_is_deterministic_resumable_and_sharded():
  source = [{"image": np.full((4, 4, 1), 20 * i, np.uint8), "label": i} for i in range(10)]
  aug = P.image_preprocess([0.0], [1.0], crop_padding=1, flip=True)
  one = P.TrainStream(P.train_dataset(source, 0, aug), 6)
  batches = [next(one) for _ in range(5)]   # crosses epoch boundaries
  labels = np.concatenate([b["label"] for b in batches])   # 30 = three epochs of 10
  epochs = labels.reshape(3, 10)
  for e in epochs:
    assert sorted(e.tolist()) == list(range(10))               # every example once per epoch
  assert not np.array_equal(epochs[0], epochs[1])              # reshuffled each epoch
  again = P.TrainStream(P.train_dataset(source, 0, aug), 6)
  again.set_state({"step": 3})
  np.testing.assert_array_equal(next(again)["image"], batches[3]["image"])
  # Two processes each read half of every global batch; together they are the 1-process batch.
  halves = [P.TrainStream(P.train_dataset(source, 0, aug), 6, process_index=p, process_count=2)
            for p in range(2)]
  for s in range(5):
    joined = np.concatenate([h.batch_at(s)["image"] for h in halves])
    np.testing.assert_array_equal(joined, batches[s]["image"])
  other_seed = P.TrainStream(P.train_dataset(source, 1, aug), 6)
  assert not np.array_equal(np.concatenate([next(other_seed)["label"] for _ in range(5)]), labels)


def test_eval_batches_pad_and_mask_every_example_once():
  source = [{"image": np.zeros((2, 2, 1), np.uint8), "label": i} for i in range(11)]
  seen = []
  for p in range(2):
    for b in P.eval_batches(source, 4, process_index=p, process_count=2):
      assert b["label"].shape == (2,)
      seen += [int(l) for l, m in zip(b["label"], b["mask"]) if m]
  assert sorted(seen) == list(range(11))


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "mnist")), reason="no shared data")
def test_shared_mnist_reads():
  src = I.load_local_images(os.path.join(SHARED, "mnist"), "test")
  assert len(src) == 10_000 and src[0]["image"].shape == (28, 28, 1)
  assert int(src[0]["label"]) == 7   # the first MNIST test digit



def test_decoded_once_matches_decoding_on_access(tmp_path):
  folder = make_image_folder(str(tmp_path / "imgs"))   # PNG: lossless, so exact
  lazy = I.load_local_images(folder, "train")
  eager = lazy.decoded(limit_mb=1, workers=2)
  assert isinstance(eager.images, np.ndarray) and eager.images.shape == (6, 8, 8, 3)
  assert eager.classes == lazy.classes
  for i in range(6):
    np.testing.assert_array_equal(eager[i]["image"], lazy[i]["image"])
    assert eager[i]["label"] == lazy[i]["label"]
  assert lazy.decoded(limit_mb=1e-4) is lazy      # 6 x 192 bytes is over 105 bytes: kept encoded
  assert lazy.decoded(limit_mb=0) is lazy         # 0 = off
  assert eager.decoded(limit_mb=1) is eager       # already arrays
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(os.path.join(folder, "train", "dog", "0009.png"))
  mixed = I.load_local_images(folder, "train")
  assert mixed.decoded(limit_mb=1) is mixed       # shapes differ: decoded on access
  with open(os.path.join(folder, "train", "dog", "0001.png"), "wb") as f:
    f.write(b"not a png")
  with pytest.raises(I.DataError, match=r"train/dog/0001.png: cannot decode"):
    I.load_local_images(folder, "train").decoded(limit_mb=1)   # at load, naming the file


def test_random_crop_is_a_window_of_the_zero_padded_image():
  for seed in range(200):
    shape_rng = np.random.default_rng(seed)
    h, w, pad = (int(v) for v in shape_rng.integers(1, 12, size=3))   # pad > h included
    img = shape_rng.integers(0, 255, (h, w, 3)).astype(np.uint8)
    dy, dx = np.random.default_rng(seed).integers(0, 2 * pad + 1, size=2)
    want = np.pad(img, ((pad, pad), (pad, pad), (0, 0)))[dy:dy + h, dx:dx + w]
    np.testing.assert_array_equal(P.random_crop(img, pad, np.random.default_rng(seed)), want)


def test_batch_augment_crops_flips_normalizes_and_agrees_over_processes():
  rng = np.random.default_rng(0)
  imgs = rng.integers(0, 256, (16, 6, 5, 3)).astype(np.uint8)
  labels = np.arange(16, dtype=np.int64)
  mean, std = np.float32([0.5, 0.4, 0.3]), np.float32([0.2, 0.25, 0.3])
  f = P.batch_image_augment(mean, std, crop_padding=2, flip=True)
  full = f({"image": imgs, "label": labels, "id": labels}, np.random.default_rng([0, 3]), 16, 0)
  assert set(full) == {"image", "label"} and full["label"].dtype == np.int32
  assert full["image"].shape == (16, 6, 5, 3) and full["image"].dtype == np.float32
  seen = set()
  for i in range(16):   # each row is one zero-padded crop of its image, maybe mirrored
    padded = np.pad(imgs[i], ((2, 2), (2, 2), (0, 0)))
    hits = [(dy, dx, m) for dy in range(5) for dx in range(5) for m in (False, True)
            if np.allclose(full["image"][i], ((padded[dy:dy + 6, dx:dx + 5][:, ::-1] if m else
                                               padded[dy:dy + 6, dx:dx + 5]) / 255.0 - mean) / std,
                           atol=1e-6)]
    assert hits, i
    seen.add(hits[0][2])
  assert seen == {False, True}
  # Process 1 of 2 (rows 8:16, drawn from the same generator) gets the same rows.
  half = f({"image": imgs[8:], "label": labels[8:]}, np.random.default_rng([0, 3]), 16, 8)
  np.testing.assert_array_equal(half["image"], full["image"][8:])
  # Through a TrainStream: a pure function of the step, and sharding keeps the rows.
  src = I.ImageSource(imgs, labels)
  one = P.TrainStream(P.train_dataset(src, 1), 8, batch_fn=f, seed=1)
  two = [P.TrainStream(P.train_dataset(src, 1), 8, batch_fn=f, seed=1, process_index=k,
                       process_count=2) for k in range(2)]
  b = one.batch_at(5)
  np.testing.assert_array_equal(b["image"], one.batch_at(5)["image"])
  np.testing.assert_array_equal(b["image"], np.concatenate([t.batch_at(5)["image"] for t in two]))
  assert not np.array_equal(b["image"], one.batch_at(6)["image"])
