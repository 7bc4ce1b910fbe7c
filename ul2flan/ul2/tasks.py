"""Registering UL2 / UL2R seqio tasks over a corpus, and finding a task's denoiser mixture.

A task's mixture may be given as a callable returning it: it is then built when the task is used
(after gin is parsed), so gin-configured lengths and presets bound after the task module was
imported still apply. `task_mixture(name)` returns the mixture a task uses (for inspect-task).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Mapping

import gin
import seqio

from ul2flan import registration
from ul2flan import vocabularies
from ul2flan.ul2 import denoisers
from ul2flan.ul2 import lengths
from ul2flan.ul2 import preprocessors
from ul2flan.ul2 import sources as corpus_sources

MixtureSpec = denoisers.DenoiserMixture | str | Callable[[], denoisers.DenoiserMixture]

_TASK_MIXTURES: dict[str, Callable[[], denoisers.DenoiserMixture]] = {}


class UL2Task(seqio.Task):
  """A seqio Task whose examples are sized for a decoder row of inputs + targets tokens.

  With `fill_rows` an example's inputs may be longer than `sequence_length["inputs"]` (or its
  targets longer than theirs) while the two together fit the row, so seqio's per-feature trim
  would cut text; the trim here is to the row. The denoiser sizes every example exactly anyway.
  """

  def _trim_output_features(self, dataset, sequence_length):
    if sequence_length and sequence_length.get("inputs") and sequence_length.get("targets"):
      row = sequence_length["inputs"] + sequence_length["targets"]
      sequence_length = {**sequence_length, "inputs": row, "targets": row}
    return super()._trim_output_features(dataset, sequence_length)


def _resolve_mixture(mixture: MixtureSpec, inputs_length: int | None,
                     targets_length: int | None) -> denoisers.DenoiserMixture:
  if callable(mixture) and not isinstance(mixture, denoisers.DenoiserMixture):
    mixture = mixture()
  if isinstance(mixture, str):
    mixture = denoisers.get_preset(mixture)
  overrides = {}
  if inputs_length is not None:
    overrides["inputs_length"] = inputs_length
  if targets_length is not None:
    overrides["targets_length"] = targets_length
  return dataclasses.replace(mixture, **overrides)


@gin.configurable
def register_ul2_task(name: str, source: seqio.DataSource | str,
                      mixture: MixtureSpec = "UL2R",
                      vocabulary: seqio.Vocabulary | None = None,
                      text_key: str = corpus_sources.TEXT_KEY,
                      inputs_length: int | None = None, targets_length: int | None = None,
                      overwrite: bool = False) -> seqio.Task:
  """Registers a seqio task that applies a denoiser mixture to a text corpus.

  Args:
    name: the task name.
    source: a seqio DataSource with a string field `text_key`, or a `source_from_spec` string.
    mixture: a DenoiserMixture, a preset name ("UL2R", "UL2"), or a callable returning a mixture
      (evaluated when the task is used).
    vocabulary: defaults to the run's configured vocabulary (`vocabularies.configured()`).
    text_key: the source's text field.
    inputs_length, targets_length: override the mixture's lengths (a `sequence_length` given to
      `get_dataset` overrides them again).
    overwrite: replace a task of that name that ul2flan registered before (a user's task of the
      same name is never replaced).

  Raises:
    ValueError: the mixture does not fit the lengths (e.g. more spans than sentinels); checked
      now for a fixed mixture, when the task is used for a callable one.
  """
  mixture_fn = functools.partial(_resolve_mixture, mixture, inputs_length, targets_length)
  vocabulary = vocabulary or vocabularies.configured()
  if not callable(mixture) or isinstance(mixture, (str, denoisers.DenoiserMixture)):
    lengths.compile_mixture(mixture_fn(), vocabulary)  # fail now, not at the first batch
  if isinstance(source, str):
    source = corpus_sources.source_from_spec(source)
  task = registration.add_task(
      name, replace=overwrite, source=source,
      preprocessors=preprocessors.ul2_preprocessors(mixture_fn, text_key),
      output_features=preprocessors.ul2_output_features(vocabulary), metric_fns=[],
      task_cls=UL2Task)
  _TASK_MIXTURES[name] = mixture_fn
  return task


@gin.configurable
def register_ul2_mixture(name: str, sources: Mapping[str, tuple[seqio.DataSource | str, float]],
                         mixture: MixtureSpec = "UL2R", overwrite: bool = False,
                         **task_kwargs) -> seqio.Mixture:
  """Registers one UL2 task per corpus (`{name}_{corpus}`) and a seqio mixture of them.

  `sources` maps a corpus label to (source, rate). Every task draws its own denoisers per example,
  so the denoiser shares hold within each corpus.
  """
  if not sources:
    raise ValueError(f"register_ul2_mixture({name!r}): no sources given")
  tasks = []
  for label, (source, rate) in sources.items():
    task_name = f"{name}_{label}"
    register_ul2_task(task_name, source, mixture, overwrite=overwrite, **task_kwargs)
    tasks.append((task_name, rate))
  return registration.add_mixture(name, tasks, replace=overwrite)


@gin.configurable
def ul2_corpus_task(corpus: str = gin.REQUIRED, name: str = "ul2r_corpus",
                    mixture: MixtureSpec = "UL2R", text_key: str = corpus_sources.TEXT_KEY) -> str:
  """Gin entry point: registers a UL2 task over a corpus spec ("jsonl:/data/*.jsonl", see
  `sources.source_from_spec`) and returns its name, for `MIXTURE_OR_TASK_NAME =
  @ul2_corpus_task()`. The mixture is built when the task is used (after gin is parsed)."""
  register_ul2_task(name, corpus, lambda: _resolve_mixture(mixture, None, None),
                    text_key=text_key, overwrite=True)
  return name


@gin.configurable
def text_lm_task(corpus: str = gin.REQUIRED, name: str = "text_lm_corpus",
                 text_key: str = corpus_sources.TEXT_KEY) -> str:
  """Gin entry point: a causal LM task (`targets` = the document, EOS appended) over a corpus
  spec; returns its name. The pipelines score held-out text with it (`EvalConfig.
  text_dataset_cfg`, on the corpus's validation split)."""
  registration.add_task(
      name, replace=True, source=corpus_sources.source_from_spec(corpus),
      preprocessors=[functools.partial(seqio.preprocessors.rekey, key_map={"targets": text_key}),
                     seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features={"targets": seqio.Feature(vocabularies.configured(), add_eos=True)},
      metric_fns=[])
  return name


def task_mixture(task_name: str) -> denoisers.DenoiserMixture | None:
  """The denoiser mixture of a UL2 task registered here (None for any other task)."""
  mixture_fn = _TASK_MIXTURES.get(task_name)
  return mixture_fn() if mixture_fn else None
