"""Batched autoregressive decoding with a KV cache, and a text `Generator` over a checkpoint.

Prompt layout (what the model saw in training, seqio conventions):
  * Decoder inputs are targets shifted right, so every sequence starts with BOS id 0.
  * Prefix LM (`seqio.PrefixLMFeatureConverter`): inputs end with EOS (id 1); in shifted-input space
    the bidirectional region is BOS + input tokens + that EOS, and the first target is predicted
    at the EOS position. So a prompt is fed as `[0] + ids + [1]`, all of it bidirectional.
  * Causal LM (`seqio.DecoderFeatureConverter`): a prompt is `[0] + ids` (no EOS: that would end
    the document), attended causally.

Batch layout: prompts are RIGHT-padded into a [batch, prompt_len] array. Cache slot i holds the
token at position i, so row r's prompt fills slots 0..len_r-1 and its t-th generated token goes
to slot len_r + t (a per-row cache offset). Padded slots are marked segment 0 (invisible) until a
generated token overwrites them.

Decoding is one prefill forward pass over the whole prompt batch, then one-token steps in a
`jax.lax.while_loop` that ends when every row has produced EOS or `max_new_tokens`. The step
function is jitted once per (batch, prompt_len, max_new_tokens, greedy/sampling) shape;
temperature, top-k and top-p are traced values, so changing them does not recompile.
`use_cache=False` selects the reference path that recomputes the full forward pass every step
(same sampling code and random stream), used by tests and benchmarks.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ul2flan import partitioning
from ul2flan.evaluation import scoring
from ul2flan.model import Decoder, DecoderConfig

Array = jax.Array

PAD_ID = 0  # also BOS: decoder inputs are targets shifted right with a leading 0
EOS_ID = 1


class DecodeResult(NamedTuple):
  """tokens: [batch, max_new_tokens] generated ids, EOS included, PAD_ID after it.

  lengths: [batch] number of generated tokens per row, EOS included.
  """
  tokens: np.ndarray
  lengths: np.ndarray


# ---- prompts ------------------------------------------------------------------------------------
def model_prompt(ids: Sequence[int], prefix_lm: bool) -> list[int]:
  """The decoder input tokens of a prompt: BOS, the ids, and EOS for a prefix LM."""
  return [PAD_ID] + list(ids) + ([EOS_ID] if prefix_lm else [])


def pad_prompts(prompts: Sequence[Sequence[int]], length: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
  """Right-pads model prompts into ([batch, length] int32 tokens, [batch] int32 lengths)."""
  if not prompts:
    raise ValueError("no prompts to pad")
  lengths = np.array([len(p) for p in prompts], np.int32)
  if lengths.min() < 1:
    raise ValueError("every model prompt needs at least one token (the BOS id 0)")
  length = int(lengths.max()) if length is None else length
  if lengths.max() > length:
    raise ValueError(f"prompt of {lengths.max()} tokens does not fit the length {length}")
  tokens = np.zeros((len(prompts), length), np.int32)
  for row, prompt in enumerate(prompts):
    tokens[row, :len(prompt)] = prompt
  return tokens, lengths


# ---- token choice -------------------------------------------------------------------------------
def filter_logits(logits: Array, top_k: Array | int, top_p: Array | float) -> Array:
  """Sets logits outside the top-k, then outside the top-p nucleus, to -inf.

  top_k <= 0 and top_p >= 1 switch the filters off. The nucleus is the smallest set of the most
  likely tokens (of the top-k-renormalised distribution) whose probability reaches top_p. Tokens
  tied with the last kept one are kept too.
  """
  vocab = logits.shape[-1]
  top_k = jnp.asarray(top_k, jnp.int32)
  top_p = jnp.asarray(top_p, jnp.float32)
  descending = -jnp.sort(-logits, axis=-1)
  rank = jnp.arange(vocab)
  k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
  descending = jnp.where(rank < k, descending, -jnp.inf)
  probs = jax.nn.softmax(descending, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  kept = (rank < k) & ((mass_before < top_p) | (top_p >= 1.0))
  num_kept = jnp.maximum(jnp.sum(kept, axis=-1, keepdims=True), 1)
  threshold = jnp.take_along_axis(descending, num_kept - 1, axis=-1)
  return jnp.where(logits >= threshold, logits, -jnp.inf)


def choose_tokens(logits: Array, rng: Array, temperature: Array, top_k: Array, top_p: Array,
                  greedy: bool) -> Array:
  """Next token per row: argmax when greedy, else a sample of the filtered distribution."""
  logits = logits.astype(jnp.float32)
  if greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  scaled = logits / jnp.maximum(temperature, 1e-6)
  return jax.random.categorical(rng, filter_logits(scaled, top_k, top_p)).astype(jnp.int32)


# ---- the two decoding loops ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Static:
  """Arguments that fix the compiled program."""
  max_new_tokens: int
  prefix_lm: bool
  greedy: bool


def _last_prompt_logits(logits: Array, lengths: Array) -> Array:
  return jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]


def _write_column(out: Array, column: Array, t: Array) -> Array:
  return jax.lax.dynamic_update_slice_in_dim(out, column[:, None], t, axis=1)


def _decode_cached(model: Decoder, params, tokens: Array, lengths: Array, rng: Array,
                   temperature: Array, top_k: Array, top_p: Array, eos_id: Array,
                   static: _Static) -> Array:
  batch, prompt_len = tokens.shape
  steps = static.max_new_tokens
  cache_len = prompt_len + steps
  choose = functools.partial(choose_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                             greedy=static.greedy)
  slots = jnp.broadcast_to(jnp.arange(cache_len, dtype=jnp.int32), (batch, cache_len))
  key_prefix = (slots < lengths[:, None]).astype(jnp.int32) if static.prefix_lm else None

  # Prefill: the whole prompt batch in one pass, writing slots 0..prompt_len-1.
  prompt_slots = slots[:, :prompt_len]
  in_prompt = (prompt_slots < lengths[:, None]).astype(jnp.int32)
  logits, cache = model.apply(
      {"params": params}, tokens, decoder_segment_ids=in_prompt, decoder_positions=prompt_slots,
      decoder_causal_attention=in_prompt if static.prefix_lm else None,
      cache=model.init_cache(batch, cache_len, model.config.compute_dtype),
      cache_offsets=jnp.zeros((batch,), jnp.int32),
      key_segment_ids=(slots < lengths[:, None]).astype(jnp.int32), key_positions=slots,
      key_causal_attention=key_prefix)
  first = choose(_last_prompt_logits(logits, lengths), jax.random.fold_in(rng, 0))
  out = jnp.zeros((batch, steps), jnp.int32).at[:, 0].set(first)
  done = first == eos_id

  def unfinished(state):
    t, _, _, done = state
    return (t < steps) & ~jnp.all(done)

  def step(state):
    t, cache, out, done = state
    slot = lengths + t - 1  # where the token fed now lives (its position, too)
    fed = jax.lax.dynamic_index_in_dim(out, t - 1, axis=1, keepdims=True)
    logits, cache = model.apply(
        {"params": params}, fed, decoder_segment_ids=jnp.ones((batch, 1), jnp.int32),
        decoder_positions=slot[:, None], cache=cache, cache_offsets=slot,
        key_segment_ids=(slots <= slot[:, None]).astype(jnp.int32), key_positions=slots,
        key_causal_attention=None)
    token = choose(logits[:, 0], jax.random.fold_in(rng, t))
    token = jnp.where(done, PAD_ID, token)
    return t + 1, cache, _write_column(out, token, t), done | (token == eos_id)

  _, _, out, _ = jax.lax.while_loop(unfinished, step, (jnp.int32(1), cache, out, done))
  return out


def _decode_uncached(model: Decoder, params, tokens: Array, lengths: Array, rng: Array,
                     temperature: Array, top_k: Array, top_p: Array, eos_id: Array,
                     static: _Static) -> Array:
  """Reference: every step reruns the model over the whole [prompt + generated] buffer."""
  batch, prompt_len = tokens.shape
  steps = static.max_new_tokens
  total = prompt_len + steps
  choose = functools.partial(choose_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                             greedy=static.greedy)
  slots = jnp.broadcast_to(jnp.arange(total, dtype=jnp.int32), (batch, total))
  prefix = (slots < lengths[:, None]).astype(jnp.int32) if static.prefix_lm else None
  buffer = jnp.zeros((batch, total), jnp.int32).at[:, :prompt_len].set(tokens)
  place = jax.vmap(lambda row, value, at: jax.lax.dynamic_update_slice(row, value[None], (at,)))

  def unfinished(state):
    t, _, _, done = state
    return (t < steps) & ~jnp.all(done)

  def step(state):
    t, buffer, out, done = state
    known = (slots < (lengths + t)[:, None]).astype(jnp.int32)
    logits = model.apply({"params": params}, buffer, decoder_segment_ids=known,
                         decoder_positions=slots, decoder_causal_attention=prefix)
    token = choose(_last_prompt_logits(logits, lengths + t), jax.random.fold_in(rng, t))
    token = jnp.where(done, PAD_ID, token)
    buffer = place(buffer, token, lengths + t)
    return t + 1, buffer, _write_column(out, token, t), done | (token == eos_id)

  state = (jnp.int32(0), buffer, jnp.zeros((batch, steps), jnp.int32),
           jnp.zeros((batch,), bool))
  return jax.lax.while_loop(unfinished, step, state)[2]


@functools.lru_cache(maxsize=None)
def _compiled(config: DecoderConfig, use_cache: bool) -> Callable:
  loop = _decode_cached if use_cache else _decode_uncached
  return jax.jit(functools.partial(loop, Decoder(config)), static_argnames=("static",))


def generated_lengths(tokens: np.ndarray, eos_id: int | None = EOS_ID) -> np.ndarray:
  """Tokens per row up to and including the first EOS (all of them if there is none)."""
  steps = tokens.shape[1]
  if eos_id is None:
    return np.full((tokens.shape[0],), steps, np.int32)
  is_eos = tokens == eos_id
  return np.where(is_eos.any(axis=1), is_eos.argmax(axis=1) + 1, steps).astype(np.int32)


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
  if top_k is not None and top_k < 1:
    raise ValueError(f"top_k must be >= 1 (or None for no top-k filter), got {top_k}")
  if top_p is not None and not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must be in (0, 1] (or None for no nucleus filter), got {top_p}")


def _decode_arguments(params, tokens, lengths, *, max_new_tokens: int,
                      prefix_lm: bool, temperature: float, top_k: int | None,
                      top_p: float | None, rng: Array | int, eos_id: int | None):
  """Checks the settings; returns (positional args, static args) of the jitted loop."""
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  _check_sampling(temperature, top_k, top_p)
  tokens = jnp.asarray(tokens, jnp.int32)
  lengths = jnp.asarray(lengths, jnp.int32)
  if tokens.ndim != 2 or lengths.shape != tokens.shape[:1]:
    raise ValueError(f"tokens must be [batch, length] and lengths [batch]; got {tokens.shape} "
                     f"and {lengths.shape}")
  if isinstance(rng, int):
    rng = jax.random.key(rng)
  args = (params, tokens, lengths, rng, jnp.float32(temperature), jnp.int32(top_k or 0),
          jnp.float32(1.0 if top_p is None else top_p),
          jnp.int32(-1 if eos_id is None else eos_id))
  return args, _Static(max_new_tokens=max_new_tokens, prefix_lm=prefix_lm,
                       greedy=temperature == 0.0)


def decode(params, config: DecoderConfig, tokens, lengths, *, max_new_tokens: int,
           prefix_lm: bool, temperature: float = 0.0, top_k: int | None = None,
           top_p: float | None = None, rng: Array | int = 0, eos_id: int | None = EOS_ID,
           use_cache: bool = True) -> DecodeResult:
  """Continues a right-padded batch of model prompts (see `model_prompt` / `pad_prompts`).

  Args:
    params: the decoder's parameters.
    config: the decoder's architecture.
    tokens: [batch, prompt_len] int model prompts, right-padded.
    lengths: [batch] number of real tokens per row (>= 1).
    max_new_tokens: tokens to generate at most per row.
    prefix_lm: attend bidirectionally over the prompt (the model was trained as a prefix LM).
    temperature: 0 for greedy decoding, else the softmax temperature of sampling.
    top_k, top_p: sampling filters (None: off).
    rng: a JAX key or an int seed; step t draws with `fold_in(rng, t)`.
    eos_id: a row stops after this token; None never stops early.
    use_cache: False runs the uncached reference (full forward pass every step).
  """
  args, static = _decode_arguments(
      params, tokens, lengths, max_new_tokens=max_new_tokens, prefix_lm=prefix_lm,
      temperature=temperature, top_k=top_k, top_p=top_p, rng=rng, eos_id=eos_id)
  out = np.asarray(jax.device_get(_compiled(config, use_cache)(*args, static=static)))
  return DecodeResult(tokens=out, lengths=generated_lengths(out, eos_id))


def compile_decode(params, config: DecoderConfig, tokens, lengths, *, use_cache: bool = True,
                   **settings) -> Callable[[], Array]:
  """Compiles `decode(...)` for these inputs ahead of time; returns a call that only runs it.

  For timing compilation and decoding apart (benchmarks). `settings` are `decode`'s keywords.
  """
  settings = {"temperature": 0.0, "top_k": None, "top_p": None, "rng": 0, "eos_id": EOS_ID,
              **settings}
  args, static = _decode_arguments(params, tokens, lengths, **settings)
  compiled = _compiled(config, use_cache).lower(*args, static=static).compile()
  return lambda: compiled(*args)


# ---- text generation ----------------------------------------------------------------------------
def bucket_length(length: int) -> int:
  """Padded prompt length: powers of two up to 512, then multiples of 256 (few compilations)."""
  if length <= 512:
    return max(16, 1 << math.ceil(math.log2(max(length, 1))))
  return 256 * math.ceil(length / 256)


class Generator:
  """`ul2flan.evaluation.harness.Generator` over a decoder and a seqio vocabulary.

  Prompts (times `num_samples`) are sorted by length and decoded `batch_size` rows at a time;
  prompt lengths are bucketed (`bucket_length`) and short batches padded so that a task compiles
  a handful of programs. Prompts are not truncated: fitting them to `max_prompt_tokens` (the
  trained input length) is the caller's job, as the evaluation harness does. `last_stats` holds
  the throughput of the latest `generate` call.
  """

  def __init__(self, config: DecoderConfig, params, vocabulary, *, prefix_lm: bool,
               batch_size: int = 16, max_prompt_tokens: int | None = None,
               partitioner: partitioning.Partitioner | None = None):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    self.config = config
    self.params = params
    self.vocabulary = vocabulary
    self.prefix_lm = prefix_lm
    self.batch_size = batch_size
    self.max_prompt_tokens = max_prompt_tokens
    self.partitioner = partitioner
    self.last_stats: dict[str, float] = {}

  def count_tokens(self, text: str) -> int:
    """Prompt length as the training inputs measured it (ids, plus EOS for a prefix LM)."""
    return len(self.vocabulary.encode(text)) + (1 if self.prefix_lm else 0)

  def encode(self, text: str) -> list[int]:
    return model_prompt(self.vocabulary.encode(text), self.prefix_lm)

  def decode_text(self, ids: Sequence[int]) -> str:
    ids = list(ids)
    if EOS_ID in ids:
      ids = ids[:ids.index(EOS_ID)]
    return self.vocabulary.decode(ids)

  def generate(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
               top_k: int | None = None, top_p: float | None = None, num_samples: int = 1,
               seed: int = 0) -> list[list[str]]:
    """For each prompt, `num_samples` continuations (text only, prompt not repeated)."""
    if isinstance(prompts, str):
      raise TypeError("generate() takes a sequence of prompts, not a single string")
    if num_samples < 1:
      raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    _check_sampling(temperature, top_k, top_p)
    start = time.perf_counter()
    outputs = self._generate_encoded([self.encode(p) for p in prompts], num_samples,
                                     max_new_tokens=max_new_tokens, temperature=temperature,
                                     top_k=top_k, top_p=top_p, seed=seed)
    texts = [self.decode_text(ids) for ids in outputs]
    self._record_stats(len(prompts), outputs, time.perf_counter() - start)
    return [texts[i * num_samples:(i + 1) * num_samples] for i in range(len(prompts))]

  def generate_ids(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                   **sampling) -> list[list[int]]:
    """Token-level `generate` (one sample per prompt): for prompts that are not plain text,
    e.g. an infilling prompt with a sentinel id inside. Prompts are vocabulary ids without
    BOS/EOS; the prefix-LM / causal layout is added here as for text prompts."""
    start = time.perf_counter()
    encoded = [model_prompt(list(p), self.prefix_lm) for p in prompts]
    outputs = self._generate_encoded(encoded, 1, max_new_tokens=max_new_tokens, **sampling)
    self._record_stats(len(prompts), outputs, time.perf_counter() - start)
    return outputs

  def _generate_encoded(self, encoded: list[list[int]], num_samples: int, *, max_new_tokens: int,
                        temperature: float = 0.0, top_k: int | None = None,
                        top_p: float | None = None, seed: int = 0) -> list[list[int]]:
    rows = [i for i in range(len(encoded)) for _ in range(num_samples)]
    order = sorted(range(len(rows)), key=lambda r: len(encoded[rows[r]]))
    outputs: list[list[int]] = [[] for _ in rows]
    # Every call decodes the same number of rows (filler rows pad the last one): batch_size, or
    # for small requests the next power of two, so few shapes get compiled.
    rows_per_call = min(self.batch_size, 1 << math.ceil(math.log2(max(len(rows), 1))))
    for chunk_index, begin in enumerate(range(0, len(order), rows_per_call)):
      chunk = order[begin:begin + rows_per_call]
      generated = self._decode_chunk(
          [encoded[rows[r]] for r in chunk], rows_per_call, max_new_tokens=max_new_tokens,
          temperature=temperature, top_k=top_k, top_p=top_p,
          rng=jax.random.fold_in(jax.random.key(seed), chunk_index))
      for r, ids in zip(chunk, generated):
        outputs[r] = ids
    return outputs

  def _decode_chunk(self, prompts: list[list[int]], rows: int, **kwargs) -> list[list[int]]:
    filler = [[PAD_ID]] * (rows - len(prompts))  # a lone BOS; its output is dropped
    tokens, lengths = pad_prompts(prompts + filler,
                                  bucket_length(max(len(p) for p in prompts)))
    if self.partitioner is None:
      result = decode(self.params, self.config, tokens, lengths, prefix_lm=self.prefix_lm,
                      **kwargs)
    else:
      with self.partitioner.activation_context():
        result = decode(self.params, self.config, tokens, lengths, prefix_lm=self.prefix_lm,
                        **kwargs)
    return [list(result.tokens[i, :result.lengths[i]]) for i in range(len(prompts))]

  def _record_stats(self, num_prompts: int, outputs: list[list[int]], seconds: float) -> None:
    tokens = sum(len(o) for o in outputs)
    seconds = max(seconds, 1e-9)
    self.last_stats = {"examples": num_prompts, "sequences": len(outputs),
                       "generated_tokens": tokens, "seconds": seconds,
                       "examples_per_second": num_prompts / seconds,
                       "tokens_per_second": tokens / seconds}
    logging.info("generated %d tokens for %d prompts in %.2fs: %.2f examples/s, %.1f tokens/s",
                 tokens, num_prompts, seconds, num_prompts / seconds, tokens / seconds)


# ---- self-consistency ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class VotedAnswer:
  answer: str  # the majority answer ("" if no chain stated one)
  answers: list[str]  # the extracted answer of each chain
  samples: list[str]  # the chains


def self_consistency(generator, prompts: Sequence[str], *, num_samples: int,
                     max_new_tokens: int,
                     extract: Callable[[str], str] = scoring.extract_cot_answer,
                     temperature: float = 0.7, top_k: int | None = 40,
                     top_p: float | None = None, seed: int = 0) -> list[VotedAnswer]:
  """Samples `num_samples` chains per prompt and majority-votes their extracted answers.

  Defaults are the self-consistency paper's (temperature 0.7, top-k 40).
  """
  outputs = generator.generate(prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                               top_k=top_k, top_p=top_p, num_samples=num_samples, seed=seed)
  voted = []
  for samples in outputs:
    answers = [extract(s) for s in samples]
    voted.append(VotedAnswer(scoring.majority_vote(answers), answers, list(samples)))
  return voted


# ---- loading a checkpoint -----------------------------------------------------------------------
def abstract_params(config: DecoderConfig, partitioner: partitioning.Partitioner):
  """The decoder's parameter ShapeDtypeStructs, sharded as the trainer lays them out."""
  model = Decoder(config)
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
  boxed = boxed["params"]
  shardings = partitioner.param_shardings(boxed)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      nn.unbox(boxed), shardings)


def model_dir_of(checkpoint: str) -> str:
  """The model dir of a model dir, its checkpoints dir or one of its step dirs."""
  from ul2flan import checkpoints  # pylint: disable=g-import-not-at-top
  ckpt_dir, _ = checkpoints.resolve_step_dir(checkpoint)
  return os.path.dirname(ckpt_dir) if os.path.basename(ckpt_dir) == "checkpoints" else ckpt_dir


def _query_gin(name: str) -> Any:
  """A gin parameter or macro value, following macro references; None when unbound."""
  import gin  # pylint: disable=g-import-not-at-top
  try:
    value = gin.query_parameter(name)
  except (ValueError, KeyError):
    return None
  if isinstance(value, gin.config.ConfigurableReference):
    if value.configurable.name != "macro":
      return None
    return _query_gin("%" + value.scoped_selector.rsplit("/", 1)[0])
  return value


def _configured_feature_converter() -> str | None:
  return (_query_gin("train/DatasetConfig.feature_converter") or _query_gin("%FEATURE_CONVERTER")
          or _query_gin("DatasetConfig.feature_converter"))


def _configured_lengths() -> dict | None:
  lengths = (_query_gin("train/DatasetConfig.task_feature_lengths")
             or _query_gin("%TASK_FEATURE_LENGTHS"))
  return dict(lengths) if lengths else None


def _parse_saved_config(path: str) -> None:
  """Parses a model dir's config.gin, ignoring configurables this process does not register."""
  import gin  # pylint: disable=g-import-not-at-top
  # Registers every configurable config.gin may name.
  from ul2flan import register_configurables  # noqa: F401  pylint: disable=g-import-not-at-top
  try:
    gin.parse_config_files_and_bindings([path], [], finalize_config=False, skip_unknown=True)
  except (ValueError, KeyError, SyntaxError, NameError) as e:
    raise ValueError(f"cannot parse {path}: {e}. Pass the model's gin files with --gin_file "
                     f"instead.") from None


def _prompt_budget(lengths: dict | None, prefix_lm: bool) -> int | None:
  """The prompt length the model was trained on: its inputs (prefix LM) or targets length."""
  if not lengths:
    return None
  if prefix_lm and "inputs" in lengths:
    return int(lengths["inputs"])
  return int(lengths["targets"]) if "targets" in lengths else None


def load_generator(checkpoint: str, gin_files: Sequence[str] = (),
                   gin_bindings: Sequence[str] = (), prefix_lm: bool | None = None, *,
                   batch_size: int = 16, max_prompt_tokens: int | None = None) -> Generator:
  """A `Generator` over a trained checkpoint (model dir, checkpoints dir or step dir).

  The model is configured by `gin_files` + `gin_bindings`, or, with no gin files, by the
  config.gin the trainer wrote into the model dir (plus the bindings). The global gin config is
  cleared first. Whether to decode as a prefix LM comes from `prefix_lm`, else from the gin
  configuration's training feature converter ("prefix_lm"), checked in the given gin files and
  then in the model dir's config.gin; with neither, the model is treated as a causal LM.
  `max_prompt_tokens` defaults to the trained inputs length (prefix LM) or targets length.
  """
  import gin  # pylint: disable=g-import-not-at-top
  from ul2flan import checkpoints  # pylint: disable=g-import-not-at-top
  from ul2flan import cli  # pylint: disable=g-import-not-at-top
  from ul2flan import vocab  # pylint: disable=g-import-not-at-top

  model_dir = model_dir_of(checkpoint)
  saved_config = os.path.join(model_dir, "config.gin")
  has_saved = os.path.exists(saved_config)
  if not gin_files and not has_saved:
    raise FileNotFoundError(
        f"{saved_config} not found, so the model's architecture is unknown; pass its gin file(s) "
        f"(e.g. --gin_file=gin_configs/models/tiny.gin).")

  gin.clear_config()
  saved_converter, saved_lengths = None, None
  if gin_files:
    if has_saved and (prefix_lm is None or max_prompt_tokens is None):
      _parse_saved_config(saved_config)
      saved_converter, saved_lengths = _configured_feature_converter(), _configured_lengths()
      gin.clear_config()
    cli.parse_gin(gin_files, gin_bindings)
  else:
    _parse_saved_config(saved_config)
    cli.parse_gin([], gin_bindings)
  if prefix_lm is None:
    converter = _configured_feature_converter() or saved_converter
    prefix_lm = converter == "prefix_lm"
    if converter is None:
      logging.warning("no feature converter configured for %s; decoding as a causal LM",
                      checkpoint)
  if max_prompt_tokens is None:
    max_prompt_tokens = _prompt_budget(_configured_lengths() or saved_lengths, prefix_lm)

  config = DecoderConfig()
  try:
    partitioner = partitioning.Partitioner()
  except ValueError as e:
    logging.warning("configured mesh unusable here (%s); using all devices for data", e)
    partitioner = partitioning.Partitioner({"data": -1})
  params, step = checkpoints.restore_params(checkpoint, abstract_params(config, partitioner))
  logging.info("loaded step %d from %s (%s LM)", step, checkpoint,
               "prefix" if prefix_lm else "causal")
  return Generator(config, params, vocab.get_vocabulary(), prefix_lm=prefix_lm,
                   batch_size=batch_size, max_prompt_tokens=max_prompt_tokens,
                   partitioner=partitioner)
