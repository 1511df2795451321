"""The device prefetcher: the same batches as the stream, built off the training thread, and a
state that names the next batch to consume (exact resume whatever is in flight)."""
import threading

import numpy as np
import pytest

from attn_jax.data import pipeline as P


def _stream():
  source = [{"image": np.full((4, 4, 1), 20 * i, np.uint8), "label": i} for i in range(10)]
  aug = P.image_preprocess([0.0], [1.0], crop_padding=1, flip=True)
  return P.TrainStream(P.train_dataset(source, 0, aug), 6)


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_prefetch_yields_the_stream_batches_and_resumes_exactly(depth):
  ref = [_stream().batch_at(s) for s in range(7)]
  threads = set()

  def put(batch):
    threads.add(threading.current_thread().name)
    return batch

  pf = P.Prefetch(_stream(), put, depth)
  got = [next(pf) for _ in range(4)]
  assert pf.get_state() == {"step": 4}          # batches 4.. may be in flight already
  pf.close()
  resumed = P.Prefetch(_stream(), put, depth)
  resumed.set_state({"step": 4})
  got += [next(resumed) for _ in range(3)]
  resumed.close()
  for a, b in zip(got, ref):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  if depth:
    assert threads and all(t.startswith("prefetch") for t in threads)   # off the main thread
  else:
    assert threads == {threading.current_thread().name}


def test_prefetch_keeps_depth_batches_in_flight():
  import concurrent.futures
  calls = []
  pf = P.Prefetch(_stream(), lambda b: calls.append(1) or b, depth=2)
  next(pf)
  assert len(pf._pending) == 2                   # the next two steps are being built
  concurrent.futures.wait(list(pf._pending))
  assert len(calls) == 3                          # the consumed batch + two ahead
  pf.close()
  assert not pf._pending
