"""`uneven_eval`: 17 pre-tokenized examples, so two data shards hold 9 and 8 of them.

With 4 rows per shard and per batch (BATCH_SIZE=8, 2 shards), shard 0 yields 3 batches (the last
one short: 1 row) and shard 1 only 2: two processes run out of eval data at different steps. Each
example (40..60 tokens + EOS) fills its own 64-token row, even packed.
"""

import numpy as np
import seqio
import tensorflow as tf

from ul2flan import registration
from ul2flan import vocabularies

NUM_EXAMPLES = 17
LENGTHS = [40 + (7 * i) % 21 for i in range(NUM_EXAMPLES)]


def example_tokens(i: int) -> list[int]:
  return [10 + (i * 13 + j * 7) % 500 for j in range(LENGTHS[i])]


def _dataset(split, shuffle_files=False, seed=None):
  del split, shuffle_files, seed
  return tf.data.Dataset.from_generator(
      lambda: ({"targets": np.array(example_tokens(i), np.int32)} for i in range(NUM_EXAMPLES)),
      output_signature={"targets": tf.TensorSpec([None], tf.int32)})


registration.add_task(
    "uneven_eval",
    source=seqio.FunctionDataSource(_dataset, splits=["validation"]),
    preprocessors=[seqio.preprocessors.append_eos_after_trim],
    output_features={"targets": seqio.Feature(vocabularies.configured(), add_eos=True)},
    metric_fns=[],
)
