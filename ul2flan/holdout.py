"""The one rule for holding a validation split out of data that has only a train split.

A document (a corpus text, a Flan row's `inputs + "\n" + targets`) is held out when its FarmHash
fingerprint (`tf.strings.to_hash_bucket_fast`) is 0 modulo `every`: about 1 in `every`, the same
slice on every run and host, duplicates on the same side, whatever the file order. Train then
leaves those documents out. Corpus sources (`ul2flan.ul2.sources`) and Flan exports
(`ul2flan.flan.exports`) both use it, and say so when they do.
"""

from __future__ import annotations

import logging

import tensorflow as tf

DEFAULT_EVERY = 100  # ~1% of train becomes validation

logger = logging.getLogger(__name__)
_announced: set[str] = set()


def announce(what: str, every: int) -> None:
  """Says once per data source that its validation split is held out of train."""
  if what not in _announced:
    _announced.add(what)
    logger.info("%s has no validation split: 1 document in ~%d is held out of train as its "
                "validation split (by a hash of the text, the same on every run; "
                "ul2flan/holdout.py)", what, every)


def held_out(text: tf.Tensor, every: int) -> tf.Tensor:
  """Whether a document belongs to the held-out validation slice."""
  return tf.equal(tf.strings.to_hash_bucket_fast(text, every), 0)


def keep_split(ds: tf.data.Dataset, split: str, every: int, text_of) -> tf.data.Dataset:
  """`ds` (read from the train files) as `split`: the held-out slice for "validation", the rest
  for "train". `text_of(example)` is the string the slice is decided on."""
  keep = split == "validation"
  return ds.filter(lambda ex: tf.equal(held_out(text_of(ex), every), keep))
