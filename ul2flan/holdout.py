"""The one rule for holding a validation split out of data that has only a train split.

A document (a corpus text, a Flan row's `inputs + "\n" + targets`) is held out when its FarmHash
fingerprint (`tf.strings.to_hash_bucket_fast`) is 0 modulo `every`: about 1 in `every`, the same
slice on every run and host, duplicates on the same side, whatever the file order. Train then
leaves those documents out. Corpus sources (`ul2flan.ul2.sources`) and Flan exports
(`ul2flan.flan.exports`) both use it, and say so when they do.
"""

from __future__ import annotations

import tensorflow as tf

DEFAULT_EVERY = 100  # ~1% of train becomes validation


def held_out(text: tf.Tensor, every: int) -> tf.Tensor:
  """Whether a document belongs to the held-out validation slice."""
  return tf.equal(tf.strings.to_hash_bucket_fast(text, every), 0)


def keep_split(ds: tf.data.Dataset, split: str, every: int, text_of) -> tf.data.Dataset:
  """`ds` (read from the train files) as `split`: the held-out slice for "validation", the rest
  for "train". `text_of(example)` is the string the slice is decided on."""
  keep = split == "validation"
  return ds.filter(lambda ex: tf.equal(held_out(text_of(ex), every), keep))
