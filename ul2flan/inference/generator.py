"""Text generation and option scoring over a trained checkpoint: the `Generator`.

`load_generator(checkpoint)` reads the model dir's `run.json` (architecture, vocabulary, the
prompt layout it was trained with, the trained prompt length) and restores the params once; the
`Generator` then implements the evaluation harness protocol (`generate`, `count_tokens`) plus
`generate_ids` (token-level prompts, e.g. infilling with a sentinel inside), `score_options` (rank
classification: the log-likelihood of each answer option) and `score_ids` (token-level scoring).

Prompt layout: the run's `RowLayout` (`ul2flan.row_layout`), the same object that laid out its
training rows. `prefix_lm` says whether the prompt is attended bidirectionally, `prompt_eos`
whether it ends with the EOS the model was trained to answer after (true for a prefix LM and for
a causal prefix LM such as Flan-base, false for a plain causal LM), and a model pre-trained
without a BOS has its start slot hidden in every forward pass, prefill, decode and scoring alike.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ul2flan import checkpoints
from ul2flan import config as config_lib
from ul2flan import partitioning
from ul2flan import row_layout
from ul2flan import stop_sequences as stop_sequences_lib
from ul2flan.inference import decoding
from ul2flan.model import decoder as decoder_lib
from ul2flan.model.config import DecoderConfig
from ul2flan.vocabularies import PAD_ID

logger = logging.getLogger(__name__)


# Generations up to this many new tokens run with the layers scanned (a few steps after a
# prefill: compiling, several times faster scanned, dominates); longer ones (CoT) unrolled, where
# each step updates the cache in place (`decoding.decode`'s scan_layers).
SCANNED_UP_TO_NEW_TOKENS = 64


def bucket_length(length: int) -> int:
  """Padded prompt length: 16, 32, 64, then four lengths per octave (80, 96, 112, 128, 160, ...,
  512, 640, 768, ...), so padding stays under a quarter of the prompt while a task compiles a
  handful of programs (each length is one program)."""
  if length <= 64:
    return max(16, 1 << (max(length, 1) - 1).bit_length())
  step = 1 << ((length - 1).bit_length() - 3)
  return step * math.ceil(length / step)


def plan_batches(lengths: Sequence[int], rows: int, new_tokens: int) -> list[list[int]]:
  """Indices of prompts grouped into decode calls of at most `rows` prompts, by length.

  A call costs `rows` x (the padded length of its longest prompt + `new_tokens`) token slots,
  whatever number of its rows are real (short calls are filled up), so the prompts are sorted by
  length and cut where the total is smallest (dynamic programming): a few short prompts are not
  padded to the length of the long prompts they would share a call with, at the price of a call.
  """
  order = sorted(range(len(lengths)), key=lambda i: lengths[i])
  cost = [0] + [math.inf] * len(order)
  cut = [0] * (len(order) + 1)
  for end in range(1, len(order) + 1):
    slots = rows * (bucket_length(lengths[order[end - 1]]) + new_tokens)
    for start in range(max(0, end - rows), end):
      if cost[start] + slots < cost[end]:
        cost[end], cut[end] = cost[start] + slots, start
  batches, end = [], len(order)
  while end:
    batches.append(order[cut[end]:end])
    end = cut[end]
  return batches[::-1]


def token_texts(vocabulary, size: int) -> list[str]:
  """The text each model id adds to a continuation, for matching stop sequences.

  Decoded after an anchor token ("a") so that a SentencePiece piece keeps its leading space;
  ids that do not decode, or that decode to nothing (EOS, padding), add "".
  """
  anchor = [int(i) for i in vocabulary.encode("a")]
  base = vocabulary.decode(anchor)
  texts = []
  for token in range(size):
    try:
      text = vocabulary.decode(anchor + [token])
    except Exception:  # pylint: disable=broad-except  # ids beyond the tokenizer's own
      text = base
    texts.append(text[len(base):] if text.startswith(base) else text)
  return texts


class Generator:
  """`ul2flan.evaluation.harness.Generator` over a decoder and a seqio vocabulary.

  Prompts (times `num_samples`) are sorted by length and decoded `batch_size` rows at a time
  (`plan_batches`); prompt lengths are bucketed (`bucket_length`) and short batches padded so that
  a task compiles a handful of programs. Give it many prompts per call: it can only sort within
  a call. Generation ends at EOS, at `max_new_tokens`, or at the first of `stop_sequences`, where
  the text is cut (as lm-eval-harness's `until`). Prompts are not truncated: fitting them to
  `max_prompt_tokens` (the trained input length) is the caller's job, as the evaluation harness
  does. `last_stats` holds the throughput of the latest `generate` call. `scan_layers` (None:
  by generation length, `SCANNED_UP_TO_NEW_TOKENS`) picks how the layers run, whatever layout the
  params are stored in.
  """

  def __init__(self, config: DecoderConfig, params, vocabulary, layout: row_layout.RowLayout, *,
               batch_size: int = 16, max_prompt_tokens: int | None = None,
               partitioner: partitioning.Partitioner | None = None,
               scan_layers: bool | None = None):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    self.config = config
    self.params = params
    self.vocabulary = vocabulary
    self.layout = layout
    self.batch_size = batch_size
    self.max_prompt_tokens = max_prompt_tokens
    self.partitioner = partitioner
    self.scan_layers = scan_layers
    self.eos_id = int(vocabulary.eos_id)  # the vocabulary's: 1 for T5-style SentencePiece
    self.last_stats: dict[str, float] = {}
    self._token_texts: list[str] | None = None
    self._call_stats: dict[str, int] = {}
    self._stop_tables: dict[tuple[str, ...], np.ndarray] = {}

  def with_layout(self, layout: row_layout.RowLayout) -> "Generator":
    """The same model and params prompted in another layout (e.g. a U-model read causally)."""
    view = copy.copy(self)
    view.layout = layout
    return view

  @property
  def prefix_lm(self) -> bool:
    return self.layout.bidirectional_inputs

  @property
  def prompt_eos(self) -> bool:
    return self.layout.prompt_ends_with_eos

  @property
  def layout_name(self) -> str:
    if self.prefix_lm:
      name = "prefix LM" if self.prompt_eos else "prefix LM (inputs targets, no EOS between)"
    else:
      name = "causal prefix LM (inputs EOS targets)" if self.prompt_eos else "causal LM"
    mode = (f", prompts after {self.vocabulary.decode(list(self.layout.mode_ids))!r}"
            if self.layout.mode_ids else "")
    return name + mode + (", start slot hidden" if self.layout.hidden_start else "")

  def count_tokens(self, text: str) -> int:
    """Prompt length as the training inputs measured it (`RowLayout.inputs_length`)."""
    return self.layout.inputs_length(len(self.vocabulary.encode(text)))

  def encode(self, text: str) -> list[int]:
    return self._model_prompt(self.vocabulary.encode(text), None)

  def _model_prompt(self, ids: Sequence[int], prompt_eos: bool | None) -> list[int]:
    """The one place that lays out a model prompt (start slot, ids, inputs' EOS)."""
    if self.prefix_lm and self.prompt_eos and prompt_eos is False:
      raise ValueError("this prefix LM's prompt ends with the EOS of its inputs")
    return self.layout.prompt(ids, self.eos_id, ends_with_eos=prompt_eos)

  def decode_text(self, ids: Sequence[int]) -> str:
    ids = list(ids)
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id)]
    return self.vocabulary.decode(ids)

  def generate(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
               top_k: int | None = None, top_p: float | None = None, num_samples: int = 1,
               seed: int = 0, stop_sequences: Sequence[str] = ()) -> list[list[str]]:
    """For each prompt, `num_samples` continuations (text only, prompt not repeated), each
    ending before the first of `stop_sequences` it contains."""
    if isinstance(prompts, str):
      raise TypeError("generate() takes a sequence of prompts, not a single string")
    decoding.check_sampling(temperature, top_k, top_p, num_samples)
    start = time.perf_counter()
    outputs = self._generate_encoded([self.encode(p) for p in prompts], num_samples,
                                     max_new_tokens=max_new_tokens, temperature=temperature,
                                     top_k=top_k, top_p=top_p, seed=seed,
                                     stop_sequences=stop_sequences)
    texts = [stop_sequences_lib.truncate(self.decode_text(ids), stop_sequences) for ids in outputs]
    self._record_stats(len(prompts), outputs, time.perf_counter() - start)
    return [texts[i * num_samples:(i + 1) * num_samples] for i in range(len(prompts))]

  def generate_ids(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                   prompt_eos: bool | None = None, **sampling) -> list[list[int]]:
    """Token-level `generate` (one sample per prompt): for prompts that are not plain text,
    e.g. an infilling prompt with a sentinel id inside. Prompts are vocabulary ids without
    BOS/EOS; the model's layout is added here as for text prompts. `prompt_eos=False` asks a
    causal prefix LM to continue a text instead (as the causal LM it was before finetuning).
    With `stop_sequences` a row ends with the token that completes a stop (ids are not cut)."""
    start = time.perf_counter()
    encoded = [self._model_prompt(p, prompt_eos) for p in prompts]
    outputs = self._generate_encoded(encoded, 1, max_new_tokens=max_new_tokens, **sampling)
    self._record_stats(len(prompts), outputs, time.perf_counter() - start)
    return outputs

  def stop_table(self, stop_sequences: Sequence[str]) -> np.ndarray | None:
    """The decoder's `stop_table` for these stops (None without any), built once per set."""
    key = tuple(dict.fromkeys(s for s in stop_sequences if s))
    if not key:
      return None
    if key not in self._stop_tables:
      if self._token_texts is None:
        self._token_texts = token_texts(self.vocabulary, self.config.vocab_size)
      self._stop_tables[key] = decoding.stop_table(self._token_texts, key)
    return self._stop_tables[key]

  def _generate_encoded(self, encoded: list[list[int]], num_samples: int, *, max_new_tokens: int,
                        temperature: float = 0.0, top_k: int | None = None,
                        top_p: float | None = None, seed: int = 0,
                        stop_sequences: Sequence[str] = ()) -> list[list[int]]:
    rows = [i for i in range(len(encoded)) for _ in range(num_samples)]
    outputs: list[list[int]] = [[] for _ in rows]
    stops = self.stop_table(stop_sequences)
    # Every call decodes the same number of rows (filler rows pad short ones): batch_size, or
    # for small requests the next power of two, so few shapes get compiled.
    rows_per_call = min(self.batch_size, 1 << math.ceil(math.log2(max(len(rows), 1))))
    self._call_stats = {"decode_calls": 0, "decode_steps": 0, "prompt_tokens": 0,
                        "padded_prompt_tokens": 0}
    batches = plan_batches([len(encoded[r]) for r in rows], rows_per_call, max_new_tokens)
    for batch_index, batch in enumerate(batches):
      generated = self._decode_chunk(
          [encoded[rows[r]] for r in batch], rows_per_call, max_new_tokens=max_new_tokens,
          temperature=temperature, top_k=top_k, top_p=top_p, stops=stops,
          rng=jax.random.fold_in(jax.random.key(seed), batch_index))
      for r, ids in zip(batch, generated):
        outputs[r] = ids
    return outputs

  def _decode_chunk(self, prompts: list[list[int]], rows: int, **kwargs) -> list[list[int]]:
    filler = [[PAD_ID]] * (rows - len(prompts))  # a lone start slot; its output is dropped
    length = bucket_length(max(len(p) for p in prompts))
    tokens, lengths = decoding.pad_prompts(prompts + filler, length)
    rng, stops = kwargs.pop("rng"), kwargs.pop("stops")
    settings = decoding.DecodeSettings(
        prefix_lm=self.prefix_lm, hide_start=self.layout.hidden_start, eos_id=self.eos_id,
        scan_layers=(kwargs["max_new_tokens"] <= SCANNED_UP_TO_NEW_TOKENS
                     if self.scan_layers is None else self.scan_layers), **kwargs)
    context = (contextlib.nullcontext() if self.partitioner is None
               else self.partitioner.activation_context())
    with context:
      result = decoding.decode(self.params, self.config, tokens, lengths, settings, rng=rng,
                               stops=stops)
    stats = self._call_stats
    stats["decode_calls"] += 1
    stats["decode_steps"] += result.steps
    stats["prompt_tokens"] += sum(len(p) for p in prompts)
    stats["padded_prompt_tokens"] += rows * length
    return [list(result.tokens[i, :result.lengths[i]]) for i in range(len(prompts))]

  def _record_stats(self, num_prompts: int, outputs: list[list[int]], seconds: float) -> None:
    tokens = sum(len(o) for o in outputs)
    seconds = max(seconds, 1e-9)
    self.last_stats = {"examples": num_prompts, "sequences": len(outputs),
                       "generated_tokens": tokens, "seconds": seconds,
                       "examples_per_second": num_prompts / seconds,
                       "tokens_per_second": tokens / seconds, **self._call_stats}
    logger.info("generated %d tokens for %d prompts in %.2fs (%d decode calls, %d steps, "
                "%d of %d prompt slots real): %.2f examples/s, %.1f tokens/s", tokens,
                num_prompts, seconds, self._call_stats["decode_calls"],
                self._call_stats["decode_steps"], self._call_stats["prompt_tokens"],
                self._call_stats["padded_prompt_tokens"], num_prompts / seconds,
                tokens / seconds)


  # ---- rank classification ------------------------------------------------------------------
  def score_options(self, prompts: Sequence[str], options: Sequence[Sequence[str]]
                    ) -> list[list[float]]:
    """log P(option + EOS | prompt) for every option of every prompt, teacher-forced."""
    ids = [list(self.vocabulary.encode(p)) for p in prompts]
    flat_prompts = [p for p, opts in zip(ids, options) for _ in opts]
    flat_targets = [list(self.vocabulary.encode(o)) + [self.eos_id]
                    for opts in options for o in opts]
    scores = self.score_ids(flat_prompts, flat_targets)
    out, k = [], 0
    for opts in options:
      out.append(scores[k:k + len(opts)])
      k += len(opts)
    return out

  def score_ids(self, prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], *,
                prompt_eos: bool | None = None) -> list[float]:
    """sum log P(target ids | prompt ids) per row, teacher-forced; ids without BOS/EOS in the
    prompt (the model's layout is added as in `generate_ids`), targets scored as given."""
    if len(prompts) != len(targets):
      raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    rows = [(self._model_prompt(p, prompt_eos), list(t)) for p, t in zip(prompts, targets)]
    if any(not t for _, t in rows):
      raise ValueError("every target needs at least one token to score")
    # Sorted by length so that a short row is not padded to the longest one's bucket.
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
    scores = [0.0] * len(rows)
    for begin in range(0, len(order), self.batch_size):
      chunk = order[begin:begin + self.batch_size]
      length = bucket_length(max(len(rows[i][0]) + len(rows[i][1]) for i in chunk))
      for i, score in zip(chunk, self._score_chunk([rows[i] for i in chunk], length)):
        scores[i] = score
    return scores

  def _score_chunk(self, chunk: list[tuple[list[int], list[int]]], length: int) -> list[float]:
    arrays = {k: np.zeros((self.batch_size, length), np.int32)
              for k in ("tokens", "targets", "weights", "segments", "prefix")}
    for r, (prompt, target) in enumerate(chunk):
      sequence = prompt + target[:-1]
      span = slice(len(prompt) - 1, len(prompt) - 1 + len(target))
      arrays["tokens"][r, :len(sequence)] = sequence
      # Position j predicts sequence[j + 1]: the first target token at the prompt's last slot.
      arrays["targets"][r, span] = target
      arrays["weights"][r, span] = 1
      arrays["segments"][r, :len(sequence)] = 1
      arrays["prefix"][r, :len(prompt)] = 1
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), (self.batch_size, length))
    scored = _sequence_log_likelihood(self.config, self.prefix_lm, self.layout.hidden_start)(
        self.params, arrays["tokens"], arrays["targets"], arrays["weights"],
        arrays["segments"], positions, arrays["prefix"])
    return [float(x) for x in np.asarray(scored)[:len(chunk)]]


@functools.lru_cache(maxsize=None)
def _sequence_log_likelihood(config: DecoderConfig, prefix_lm: bool, hide_start: bool):
  model = decoder_lib.Decoder(config)

  @jax.jit
  def score(params, tokens, targets, weights, segments, positions, prefix):
    logits = model.apply({"params": params}, tokens, segments, positions,
                         prefix if prefix_lm else None, hide_start=hide_start)
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(picked * weights, axis=-1)

  return score


# ---- loading a checkpoint -----------------------------------------------------------------------
def load_generator(checkpoint: str, run_info: config_lib.RunInfo | None = None, *,
                   prefix_lm: bool | None = None, batch_size: int = 16,
                   max_prompt_tokens: int | None = None,
                   scan_layers: bool | None = None) -> Generator:
  """A `Generator` over a trained checkpoint (model dir, checkpoints dir or step dir).

  The model is described by `run_info` (default: the model dir's run.json, written by the
  trainer). `prefix_lm` and `max_prompt_tokens` default to how the model was trained.
  """
  run_info = run_info or config_lib.read_run_info(checkpoints.model_dir_of(checkpoint))
  vocabulary = run_info.build_vocabulary()
  layout = run_info.layout_for(vocabulary)
  if prefix_lm is not None:
    layout = layout.with_bidirectional_inputs(prefix_lm)
  config = run_info.decoder_config
  partitioner = partitioning.Partitioner({"data": -1})
  params, step = checkpoints.restore_params(checkpoint,
                                            decoder_lib.abstract_params(config, partitioner))
  generator = Generator(config, params, vocabulary, layout, batch_size=batch_size,
                        max_prompt_tokens=max_prompt_tokens or run_info.prompt_budget,
                        partitioner=partitioner, scan_layers=scan_layers)
  logger.info("loaded step %d from %s (%s)", step, checkpoint, generator.layout_name)
  return generator
