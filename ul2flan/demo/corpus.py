"""seqio data sources over the embedded demo corpus (`ul2flan.world`), with no downloads."""

from __future__ import annotations

import seqio
import tensorflow as tf

from ul2flan import world


def demo_corpus_source(seed: int = 0) -> seqio.DataSource:
  """The demo pre-training corpus as a seqio source with one string field, `text`."""

  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed  # one in-memory "file"; shuffling happens in the task pipeline
    return tf.data.Dataset.from_tensor_slices({"text": world.corpus_documents(split, seed=corpus_seed)})

  corpus_seed = seed
  return seqio.FunctionDataSource(
      dataset_fn=dataset_fn, splits=("train", "validation"),
      num_input_examples={"train": len(world.corpus_documents("train", seed=seed)),
                          "validation": len(world.corpus_documents("validation", seed=seed))})
