"""Data: deterministic order, resumable position, shards disjoint and together the global batch."""

import numpy as np
import pytest
import tensorflow as tf

from ul2flan.training import data
from ul2flan.training import iterator_state
from helpers import lm_dataset


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_same_seed_same_batches_and_skip_resumes():
  cfg = lm_dataset(batch_size=4, length=64)
  a = _take(data.HostIterator(cfg, 0, 1), 3)
  b = _take(data.HostIterator(cfg, 0, 1, start_batch=2), 1)
  np.testing.assert_array_equal(a[2]["decoder_target_tokens"], b[0]["decoder_target_tokens"])
  c = _take(data.HostIterator(cfg, 0, 1), 1)
  np.testing.assert_array_equal(a[0]["decoder_target_tokens"], c[0]["decoder_target_tokens"])


def test_process_shards_are_disjoint_and_form_the_global_batch():
  cfg = lm_dataset(batch_size=4, length=64, num_data_shards=2, shuffle=False)
  whole = next(data.HostIterator(cfg, 0, 1))["decoder_target_tokens"]  # one process, 2 shards
  p0 = next(data.HostIterator(cfg, 0, 2))["decoder_target_tokens"]
  p1 = next(data.HostIterator(cfg, 1, 2))["decoder_target_tokens"]
  np.testing.assert_array_equal(np.concatenate([p0, p1]), whole)
  rows0 = {tuple(r) for r in p0}
  assert rows0.isdisjoint({tuple(r) for r in p1})


def test_packed_lm_batch_layout():
  b = next(data.HostIterator(lm_dataset(batch_size=2, length=128), 0, 1))
  tgt, inp = b["decoder_target_tokens"], b["decoder_input_tokens"]
  seg, pos = b["decoder_segment_ids"], b["decoder_positions"]
  for r in range(2):
    for s in set(seg[r]) - {0}:
      idx = np.where(seg[r] == s)[0]
      np.testing.assert_array_equal(pos[r, idx], np.arange(len(idx)))  # positions restart
      np.testing.assert_array_equal(inp[r, idx[1:]], tgt[r, idx[:-1]])  # shifted right
      assert inp[r, idx[0]] == 0 and tgt[r, idx[-1]] == 1  # BOS in, EOS out


def test_bad_feature_converter_and_batch_errors():
  with pytest.raises(ValueError, match="feature_converter must be one of"):
    data.HostIterator(lm_dataset(feature_converter="seq2seq"), 0, 1)
  with pytest.raises(ValueError, match="not divisible"):
    data.HostIterator(lm_dataset(batch_size=3, num_data_shards=2), 0, 1)


# ------------------------------------------------------------------------------------------------
# Saved iterator states: resume in O(1), exactly where the straight run is.

def _ul2r(**kw):
  return data.DatasetConfig(mixture_or_task_name="demo_ul2r", feature_converter="prefix_lm",
                            task_feature_lengths={"inputs": 64, "targets": 64}, batch_size=4,
                            **kw)


def _tokens(batches):
  return [b["decoder_target_tokens"] for b in batches]


def test_restored_iterator_continues_exactly_without_replay():
  """The reference is the straight run itself (shuffle buffer, segment cutter and packer state)."""
  cfg = _ul2r()
  straight = data.HostIterator(cfg, 0, 1)
  _take(straight, 5)
  files = straight.snapshot()
  assert list(files) == ["shard-00000-of-00001.zip"] == data.state_files(cfg, 0, 1)
  expected = _tokens(_take(straight, 3))
  resumed = data.HostIterator(cfg, 0, 1, resume={"batches_consumed": 5, "files": files})
  assert resumed.restored and resumed.position == 5
  np.testing.assert_array_equal(_tokens(_take(resumed, 3)), expected)
  assert resumed.snapshot() is not None and resumed.position == 8


def test_states_are_per_shard_so_the_process_count_may_change():
  cfg = _ul2r(num_data_shards=2)
  hosts = [data.HostIterator(cfg, p, 2) for p in (0, 1)]
  for h in hosts:
    _take(h, 2)
  files = {**hosts[0].snapshot(), **hosts[1].snapshot()}
  assert sorted(files) == ["shard-00000-of-00002.zip", "shard-00001-of-00002.zip"]
  expected = np.concatenate([next(h)["decoder_target_tokens"] for h in hosts])
  one_host = data.HostIterator(cfg, 0, 1, resume={"batches_consumed": 2, "files": files})
  assert one_host.restored
  np.testing.assert_array_equal(next(one_host)["decoder_target_tokens"], expected)


def test_unusable_states_fall_back_to_an_exact_replay(caplog):
  # The packed LM pipeline: the fallback does not depend on the mixture, and it builds in a tenth
  # of the UL2R pipeline's time (seven iterators here).
  cfg = lm_dataset(batch_size=4, length=64)
  straight = data.HostIterator(cfg, 0, 1)
  _take(straight, 3)
  (name, blob), = straight.snapshot().items()
  expected = _tokens(_take(straight, 2))
  other = data.HostIterator(lm_dataset(batch_size=4, length=64, seed=1), 0, 1)  # other batches
  _take(other, 3)
  meta, state = iterator_state.unpack(blob)
  cases = {
      "no iterator state": ({}, 3),
      "dataset config differs": ({name: other.snapshot()[name]}, 3),
      "not a saved iterator state": ({name: blob[:100]}, 3),
      "does not yield the batch saved as next": (
          {name: iterator_state.pack(state, {**meta, "next_batch_sha256": "0" * 64})}, 3),
      "is at batch 3, not 2": ({name: blob}, 2),
  }
  for reason, (files, position) in cases.items():
    caplog.clear()
    with caplog.at_level("WARNING", logger="ul2flan.training.data"):
      resumed = data.HostIterator(cfg, 0, 1, resume={"batches_consumed": position,
                                                     "files": files})
    assert not resumed.restored and reason in caplog.text and "replaying" in caplog.text, reason
    if position == 3:
      np.testing.assert_array_equal(_tokens(_take(resumed, 2)), expected)


def test_a_pipeline_whose_state_cannot_be_saved_keeps_the_position_only(caplog):
  """A Python-generator source: tf.data refuses to save it; the checkpoint must not fail."""
  cfg = lm_dataset(batch_size=2, length=32)
  it = data.HostIterator(cfg, 0, 1)
  gen = tf.data.Dataset.from_generator(lambda: iter(range(10**6)), output_signature=tf.TensorSpec(
      [], tf.int64)).map(lambda x: {"decoder_target_tokens": tf.fill([2, 32], x)})
  it._iters = [gen.prefetch(2).as_numpy_iterator()]  # pylint: disable=protected-access
  next(it)
  with caplog.at_level("WARNING", logger="ul2flan.training.data"):
    assert it.snapshot() == {}
  assert "cannot save its state" in caplog.text and "PyFunc is stateful" in caplog.text
  assert next(it)["decoder_target_tokens"][0, 0] == 1  # nothing was skipped
