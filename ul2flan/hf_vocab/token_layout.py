"""How a Hugging Face tokenizer's ids become the model's ids: padding, BOS, sentinels, new rows.

Id 0 is padding everywhere in seqio, whatever `Vocabulary.pad_id` says: `trim_and_pad_dataset`
pads with 0, packing measures an example as its count of non-zero ids
(`seqio.utils._pack_with_tf_ops`) and marks segments by `ids != 0`, and the feature converters'
loss weights are `non_padding_position(targets)` with the default pad 0. ul2flan's decoder inputs
are the targets shifted right with a leading 0 (the feature converters' `bos_id` default). A
byte-level BPE uses id 0 for a real token ("!" in GPT-2, Llama 3, Qwen), so the model cannot use
the tokenizer's ids unchanged. The layout swaps two ids instead:

* The tokenizer adds a BOS (distinct from its EOS; `TokenizerIds.bos`, what its post-processor
  puts first, not merely the `bos_token` it names): BOS and id 0 swap. Model id 0 (padding, and
  the start of every decoder input) then holds the BOS embedding: a sequence the model sees starts
  exactly as the original model's sequences did. BOS never appears inside encoded text (encode
  drops it; the leading 0 plays its part). Model id BOS holds the tokenizer's token 0.
* It adds none (SmolLM2, Qwen, GPT-2 style): token 0 moves to a free id F (taken before the
  sentinels, from the same pool). The start slot is hidden (`ul2flan.row_layout`), so row 0 holds
  nothing trained (the mean of the trained rows). Every other token keeps its own id: a declared
  `bos_token` such as SmolLM2's `<|im_start|>` is ordinary text. (Dirs imported under the older
  rule, `TokenizerIds.hidden_start` False, seeded row 0 with a copy of the EOS row.)

Sentinels (sentinel k is `sentinel_ids[k]`) never collide with a token that text encodes to, nor
with a token that has a job (BOS, EOS, padding, unknown, the chat template's tokens), except under
`last_k`, U-PaLM's choice, which reuses the tokenizer's last K tokens as they are:

* `reserved`: tokens named by `reserved_pattern` (Llama 3's `<|reserved_special_token_k|>`),
  in the order of the number the pattern captures. Encode drops them from text.
* `unused_rows`: embedding rows past the tokenizer, up to `embedding_size` (Qwen pads its
  embedding matrix to a multiple of 128, 151936 rows for 151665 tokens).
* `last_k`: the tokenizer's last K ids, top down (sentinel 0 is the last id).
* `new_rows`: new embedding rows after the tokenizer (or after `embedding_size`).

Rows that were never trained (reserved tokens, rows past the tokenizer, new rows) are often zero or
garbage in released checkpoints; `model_embedding` sets them to the mean of the trained rows.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping

import numpy as np

SENTINEL_POLICIES = ("reserved", "unused_rows", "last_k", "new_rows")
LLAMA3_RESERVED_PATTERN = r"<\|reserved_special_token_(\d+)\|>"
DROPPED = -1  # in the id tables: no counterpart on the other side


@dataclasses.dataclass(frozen=True)
class SentinelPolicy:
  """Where sentinels come from (see the module docstring)."""
  kind: str = "reserved"
  num_sentinels: int = 100
  embedding_size: int | None = None  # the model's embedding rows (unused_rows; where new_rows go)
  reserved_pattern: str = LLAMA3_RESERVED_PATTERN

  def __post_init__(self):
    if self.kind not in SENTINEL_POLICIES:
      raise ValueError(f"unknown sentinel policy {self.kind!r}; use one of {SENTINEL_POLICIES}")
    if self.num_sentinels < 1:
      raise ValueError(f"num_sentinels must be >= 1, got {self.num_sentinels}")
    if self.embedding_size is not None and self.embedding_size < 1:
      raise ValueError(f"embedding_size must be positive, got {self.embedding_size}")
    try:
      re.compile(self.reserved_pattern)
    except re.error as e:
      raise ValueError(f"reserved_pattern {self.reserved_pattern!r} is not a regex: {e}") from None


@dataclasses.dataclass(frozen=True)
class TokenizerIds:
  """What the layout needs to know about a tokenizer; all ids are the tokenizer's."""
  origin: str  # the tokenizer file, named in errors
  size: int  # ids 0 .. size - 1 exist (added tokens included)
  eos: int
  bos: int | None
  role_ids: frozenset[int]  # tokens with a job: BOS, EOS, padding, unknown, the chat template's
  added: Mapping[int, str]  # added tokens: id -> text (where reserved tokens live)
  # No BOS and the start slot hidden (`row_layout`): row 0 holds nothing trained. False with no
  # BOS is the older rule: row 0 starts as a copy of the EOS row.
  hidden_start: bool = False


@dataclasses.dataclass(frozen=True)
class TokenLayout:
  """The model's id space over a tokenizer's.

  Attributes:
    vocab_size: embedding rows the model needs (ids 0 .. vocab_size - 1).
    tokenizer_size: the tokenizer's ids are 0 .. tokenizer_size - 1.
    swap: (0, j): tokenizer ids 0 and j trade places in the model (None: nothing moves).
    start_copies: the tokenizer id whose row seeds model row 0 when no BOS is swapped in.
    sentinel_ids: model ids, sentinel k at index k.
    untrained_ids: model rows that hold no trained embedding: excluded from the mean, and set to
      it by `reinit_untrained_rows`.
    dropped_ids: tokenizer ids that encode drops (BOS, reserved sentinels, F's reserved token).
  """
  vocab_size: int
  tokenizer_size: int
  swap: tuple[int, int] | None
  start_copies: int | None
  sentinel_ids: tuple[int, ...]
  untrained_ids: tuple[int, ...]
  dropped_ids: tuple[int, ...]

  def tokenizer_to_model(self) -> np.ndarray:
    """int32[tokenizer_size]: the model id of each tokenizer id, DROPPED for dropped ones."""
    table = np.arange(self.tokenizer_size, dtype=np.int32)
    if self.swap:
      table[0] = self.swap[1]
      if self.swap[1] < self.tokenizer_size:
        table[self.swap[1]] = 0  # BOS (dropped below) or F's reserved token
    table[list(self.dropped_ids)] = DROPPED
    return table

  def model_to_tokenizer(self) -> np.ndarray:
    """int32[vocab_size]: the tokenizer id of each model id; DROPPED where there is none (0, the
    sentinels outside `last_k`, rows past the tokenizer)."""
    table = np.full(self.vocab_size, DROPPED, np.int32)
    forward = self.tokenizer_to_model()
    kept = forward != DROPPED
    table[forward[kept]] = np.flatnonzero(kept).astype(np.int32)
    return table


def _reserved_pool(ids: TokenizerIds, policy: SentinelPolicy) -> list[int]:
  pattern = re.compile(policy.reserved_pattern)
  found = []
  for i, text in ids.added.items():
    match = pattern.fullmatch(text)
    if match and i not in ids.role_ids and i != 0:
      order = int(match.group(1)) if match.groups() and match.group(1).isdigit() else i
      found.append((order, i))
  return [i for _, i in sorted(found)]


def _pool(ids: TokenizerIds, policy: SentinelPolicy, needed: int) -> list[int]:
  """The ids sentinels (and F) are taken from, in order; at least `needed` of them."""
  rows = policy.embedding_size
  if policy.kind == "reserved":
    pool = _reserved_pool(ids, policy)
    where = (f"{len(pool)} tokens match reserved_pattern {policy.reserved_pattern!r} (tokens "
             "with a job excluded)")
  elif policy.kind == "unused_rows":
    if rows is None:
      raise ValueError(
          f"{ids.origin}: sentinels='unused_rows' needs embedding_size, the model's embedding rows "
          f"(the tokenizer has {ids.size} ids; e.g. Qwen2.5 pads 151665 tokens to 151936 rows)")
    pool = list(range(ids.size, rows))  # plan_layout checked rows >= ids.size
    where = f"embedding_size {rows} leaves {len(pool)} rows past the tokenizer's {ids.size} ids"
  elif policy.kind == "last_k":
    pool = list(range(ids.size - 1, max(ids.size - 1 - needed, 0), -1))
    where = f"the tokenizer has {ids.size} ids"
  else:  # new_rows
    first = max(ids.size, rows or 0)
    pool = list(range(first, first + needed))
    where = ""
  if len(pool) < needed:
    raise ValueError(
        f"{ids.origin}: {needed} free ids are needed ({policy.num_sentinels} sentinels"
        f"{' + 1 row for token 0' if needed > policy.num_sentinels else ''}) but {where}. Lower "
        "num_sentinels, or choose sentinels='new_rows' (adds embedding rows) or 'unused_rows' "
        "with the model's embedding_size.")
  return pool


def plan_layout(ids: TokenizerIds, policy: SentinelPolicy) -> TokenLayout:
  """The layout of `ids` under `policy` (see the module docstring); clear errors when it can't."""
  if policy.embedding_size is not None and policy.embedding_size < ids.size:
    raise ValueError(f"{ids.origin}: embedding_size {policy.embedding_size} is smaller than the "
                     f"tokenizer ({ids.size} ids); the model must have a row for every token")
  has_bos = ids.bos is not None and ids.bos != ids.eos
  needed = policy.num_sentinels + (0 if has_bos else 1)
  if not has_bos and policy.kind == "last_k":
    raise ValueError(
        f"{ids.origin}: the tokenizer has no BOS distinct from EOS, so token 0 needs a free id, "
        "and sentinels='last_k' takes real tokens; choose 'reserved', 'unused_rows' or "
        "'new_rows'.")
  pool = _pool(ids, policy, needed)
  dropped = {ids.bos} if has_bos else set()
  if has_bos:
    swap, start_copies, sentinels = ((0, ids.bos) if ids.bos else None), None, pool[:needed]
  else:
    free, sentinels = pool[0], pool[1:needed]
    swap, start_copies = (0, free), (None if ids.hidden_start else ids.eos)
    if free < ids.size:
      dropped.add(free)
  sentinels = tuple(sentinels)
  clashes = sorted((set(sentinels) & ids.role_ids) | ({0} & set(sentinels)))
  if clashes:
    raise ValueError(f"{ids.origin}: sentinels={policy.kind!r} would take ids {clashes}, which "
                     "are tokens with a job (BOS / EOS / padding / unknown / chat template); "
                     "choose another policy.")
  untrained = set(range(ids.size, max(ids.size, policy.embedding_size or 0)))
  if policy.kind != "last_k":
    untrained |= set(sentinels)
  if policy.kind == "reserved":
    untrained |= set(_reserved_pool(ids, policy))
    dropped |= set(sentinels)
  vocab_size = max([ids.size, policy.embedding_size or 0, *(s + 1 for s in sentinels),
                    (swap[1] + 1) if swap else 0])
  if swap and swap[1] in untrained:  # F now holds token 0, a trained row
    untrained.discard(swap[1])
  if ids.hidden_start:  # row 0 is never attended: the trained rows' mean keeps it harmless
    untrained.add(0)
  return TokenLayout(
      vocab_size=vocab_size, tokenizer_size=ids.size, swap=swap, start_copies=start_copies,
      sentinel_ids=sentinels, untrained_ids=tuple(sorted(untrained)),
      dropped_ids=tuple(sorted(dropped)))


# ------------------------------------------------------------------------------------------------
# Embedding matrices: [rows, d] in either order. The importer applies these to the input embedding
# and, when untied, to the output projection's rows (the transpose of a [d, vocab] kernel).

def mean_of_trained_rows(rows: np.ndarray, layout: TokenLayout) -> np.ndarray:
  """The float64 mean of the rows of `rows` (model order) that hold trained embeddings."""
  trained = np.ones(layout.vocab_size, bool)
  trained[list(layout.untrained_ids)] = False
  if layout.start_copies is not None:
    trained[0] = False  # a copy of the EOS row: counted once
  return rows[trained].astype(np.float64).mean(axis=0)


def reinit_untrained_rows(rows: np.ndarray, layout: TokenLayout) -> np.ndarray:
  """A copy of `rows` (model order) with every never-trained row set to the trained rows' mean."""
  if rows.shape[0] != layout.vocab_size:
    raise ValueError(f"embedding has {rows.shape[0]} rows, the vocabulary needs "
                     f"{layout.vocab_size}")
  out = np.array(rows, copy=True)
  if layout.untrained_ids:
    out[list(layout.untrained_ids)] = mean_of_trained_rows(rows, layout).astype(rows.dtype)
  return out


def model_embedding(tokenizer_rows: np.ndarray, layout: TokenLayout,
                    reinit: bool = True) -> np.ndarray:
  """A checkpoint's embedding rows (tokenizer order) -> the model's [layout.vocab_size, d].

  Swaps token 0 into place, seeds row 0 (BOS, or a copy of EOS), adds zero rows up to
  `vocab_size`, and with `reinit` sets the never-trained rows to the mean of the trained ones.
  """
  num_rows = tokenizer_rows.shape[0]
  if num_rows < layout.tokenizer_size or num_rows > layout.vocab_size:
    raise ValueError(
        f"the checkpoint's embedding has {num_rows} rows; this tokenizer needs at least "
        f"{layout.tokenizer_size} and the vocabulary at most {layout.vocab_size}. Set the "
        "vocabulary's embedding_size to the checkpoint's row count.")
  out = np.zeros((layout.vocab_size,) + tokenizer_rows.shape[1:], tokenizer_rows.dtype)
  out[:num_rows] = tokenizer_rows
  if layout.swap:
    a, b = layout.swap
    out[[a, b]] = out[[b, a]]
  if layout.start_copies is not None:
    out[0] = tokenizer_rows[layout.start_copies]
  return reinit_untrained_rows(out, layout) if reinit else out


def tokenizer_embedding(model_rows: np.ndarray, layout: TokenLayout) -> np.ndarray:
  """The inverse row order of `model_embedding` (for export): tokenizer order, all rows kept."""
  if model_rows.shape[0] != layout.vocab_size:
    raise ValueError(f"embedding has {model_rows.shape[0]} rows, the vocabulary needs "
                     f"{layout.vocab_size}")
  out = np.array(model_rows, copy=True)
  if layout.swap:
    a, b = layout.swap
    out[[a, b]] = out[[b, a]]
  return out
