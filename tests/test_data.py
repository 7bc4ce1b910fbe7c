"""Data: deterministic order, resumable position, shards disjoint and together the global batch."""

import numpy as np

from ul2flan.training import data
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
  import pytest
  with pytest.raises(ValueError, match="feature_converter must be one of"):
    data.HostIterator(lm_dataset(feature_converter="seq2seq"), 0, 1)
  with pytest.raises(ValueError, match="not divisible"):
    data.HostIterator(lm_dataset(batch_size=3, num_data_shards=2), 0, 1)
