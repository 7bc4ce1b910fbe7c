"""Causal language-modelling tasks (the base model's pre-training)."""

import functools

import seqio

from ul2flan import registration
from ul2flan import vocabularies
from ul2flan.demo import corpus

registration.add_task(
    "demo_lm",
    source=corpus.demo_corpus_source(),
    preprocessors=[
        functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
        seqio.preprocessors.tokenize,
        seqio.preprocessors.append_eos_after_trim,
    ],
    output_features={"targets": seqio.Feature(vocabularies.configured(), add_eos=True)},
    metric_fns=[],
)
