"""The embedded demo corpus (`ul2flan.demo.world`) as a seqio source, and the demo UL2 lengths.

Importing it registers the corpus spec "demo" with `ul2flan.ul2.sources` (the UL2 package never
imports the demo).
"""

from __future__ import annotations

import gin
import seqio
import tensorflow as tf

from ul2flan.demo import world
from ul2flan.ul2 import sources

SPLITS = ("train", "validation")


def demo_corpus_source(seed: int = 0) -> seqio.DataSource:
  """The demo pre-training corpus as a seqio source with one string field, `text`."""

  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed  # one in-memory "file"; shuffling happens in the task pipeline
    return tf.data.Dataset.from_tensor_slices(
        {"text": world.corpus_documents(split, seed=corpus_seed)})

  corpus_seed = seed
  return seqio.FunctionDataSource(
      dataset_fn=dataset_fn, splits=SPLITS,
      num_input_examples={split: len(world.corpus_documents(split, seed=seed))
                          for split in SPLITS})


@gin.configurable
def demo_task_lengths(inputs_length: int = 128, targets_length: int = 128) -> dict[str, int]:
  """Lengths of the demo UL2 tasks (`demo_ul2r`, `demo_ul2`), sized for a tiny CPU model.

  Read when a task is used, not when it is registered, so a gin binding anywhere applies.
  """
  return {"inputs_length": inputs_length, "targets_length": targets_length}


sources.register_named_source("demo", demo_corpus_source)
