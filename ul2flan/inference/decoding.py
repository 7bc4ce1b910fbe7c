"""Batched autoregressive decoding with a KV cache, and a text `Generator` over a checkpoint.

Prompt layout (what the model saw in training, seqio conventions):
  * Decoder inputs are targets shifted right, so every sequence starts with BOS id 0.
  * Prefix LM (`seqio.PrefixLMFeatureConverter`): inputs end with EOS (id 1); in shifted-input space
    the bidirectional region is BOS + input tokens + that EOS, and the first target is predicted
    at the EOS position. So a prompt is fed as `[0] + ids + [1]`, all of it bidirectional.
  * Causal prefix LM (`prefix_lm_causal`, Flan-PaLM from a causal PaLM): the same `[0] + ids + [1]`
    layout as a prefix LM (the model was trained to answer after the inputs' EOS), attended causally.
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
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ul2flan.model.config import DecoderConfig
from ul2flan.model.decoder import Decoder
from ul2flan.vocabularies import EOS_ID, PAD_ID

Array = jax.Array


class DecodeResult(NamedTuple):
  """tokens: [batch, max_new_tokens] generated ids, EOS included, PAD_ID after it.

  lengths: [batch] number of generated tokens per row, EOS included.
  """
  tokens: np.ndarray
  lengths: np.ndarray


# ---- prompts ------------------------------------------------------------------------------------
def model_prompt(ids: Sequence[int], ends_with_eos: bool, eos_id: int = EOS_ID) -> list[int]:
  """The decoder input tokens of a prompt: BOS, the ids, and EOS (the vocabulary's) for both
  prefix-LM layouts."""
  return [PAD_ID] + list(ids) + ([eos_id] if ends_with_eos else [])


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


def check_sampling(temperature: float, top_k: int | None, top_p: float | None,
                   num_samples: int = 1) -> None:
  """The one check of sampling settings (decode, Generator and the CLIs all call it)."""
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
  if top_k is not None and top_k < 1:
    raise ValueError(f"top_k must be >= 1 (or None for no top-k filter), got {top_k}")
  if top_p is not None and not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must be in (0, 1] (or None for no nucleus filter), got {top_p}")
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")


def _decode_arguments(params, tokens, lengths, *, max_new_tokens: int,
                      prefix_lm: bool, temperature: float, top_k: int | None,
                      top_p: float | None, rng: Array | int, eos_id: int | None):
  """Checks the settings; returns (positional args, static args) of the jitted loop."""
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  check_sampling(temperature, top_k, top_p)
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
