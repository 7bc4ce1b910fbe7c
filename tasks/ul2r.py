"""UL2R / UL2 tasks (stage 1: continue a causal LM on the mixture of denoisers as a prefix LM).

- `demo_ul2r`: UL2R (50% S, 25% R(3, .15), 25% X(32, .5)) over the embedded demo corpus.
- `demo_ul2`: UL2's 7 denoisers over the embedded demo corpus.
- `c4_ul2r`: UL2R over TFDS `c4/en:3.0.1` (registration reads nothing; see docs/ul2r.md to prepare).

The demo lengths (gin: `demo_task_lengths`, default 128 inputs + 128 targets) are read when the
task is used; the trainer's `task_feature_lengths` replace them anyway at `get_dataset` time.
"""

from ul2flan.demo import corpus
from ul2flan.ul2 import denoisers
from ul2flan.ul2 import sources
from ul2flan.ul2 import tasks

C4_TFDS_NAME = "c4/en:3.0.1"

tasks.register_ul2_task(
    "demo_ul2r", corpus.demo_corpus_source(),
    lambda: denoisers.ul2r_preset(**corpus.demo_task_lengths()))
tasks.register_ul2_task(
    "demo_ul2", corpus.demo_corpus_source(),
    lambda: denoisers.ul2_preset(**corpus.demo_task_lengths()))
tasks.register_ul2_task("c4_ul2r", sources.tfds_source(C4_TFDS_NAME), denoisers.ul2r_preset)
