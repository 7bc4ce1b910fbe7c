"""Vocabularies, and the one place that says which ids are sentinels.

* `get_vocabulary()` (gin: `get_vocabulary.kind` / `.path` / `.extra_ids` / ...) is the vocabulary
  a run trains with: the embedded demo SentencePiece model, any SentencePiece model by path, or a
  Hugging Face `tokenizer.json` (`kind='hf'`, `ul2flan.hf_vocab.vocabulary`: its sentinels follow
  `.sentinels` / `.num_sentinels` / `.embedding_size` / `.reserved_pattern`, see
  `ul2flan.hf_vocab.token_layout`).
* `ConfiguredVocabulary()` is what registered tasks hold: a `seqio.Vocabulary` that looks up
  `get_vocabulary()` each time it is used, so a task registered before gin is parsed (importing
  `ul2flan_tasks` from a gin file, as t5x does) still uses the vocabulary bound afterwards, and the
  model and every task can never disagree.
* Sentinels: `sentinel_ids(vocabulary)` lists sentinel k at index k. A vocabulary may define its
  own (`vocabulary.sentinel_ids()`); otherwise the T5 convention holds: sentinel k has id
  `vocab_size - 1 - k`, over the vocabulary's extra ids, or over the last 100 ids of a vocabulary
  without extra ids (U-PaLM reused the last 100 ids of PaLM's vocabulary).

T5 id conventions for SentencePiece: pad=0 (also the decoder's BOS), eos=1, unk=2. A Hugging Face
vocabulary keeps pad=0 (seqio pads and packs with 0) and the tokenizer's own EOS; see
`ul2flan.hf_vocab.vocabulary`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Mapping, Sequence

import gin
import seqio

from ul2flan.hf_vocab import token_layout
from ul2flan.hf_vocab import vocabulary as hf_tokenizer

ASSETS_DIR = os.path.join(os.path.dirname(__file__), "assets")
DEMO_SPM_PATH = os.path.join(ASSETS_DIR, "demo_spm.model")
DEFAULT_EXTRA_IDS = 100
DEFAULT_NUM_SENTINELS_WITHOUT_EXTRA_IDS = 100  # U-PaLM reused the last 100 ids of PaLM's vocab
PAD_ID = 0  # also BOS: decoder inputs are targets shifted right with a leading 0
EOS_ID = 1


@functools.lru_cache(maxsize=None)
def demo_vocabulary(extra_ids: int = DEFAULT_EXTRA_IDS) -> seqio.SentencePieceVocabulary:
  """The embedded demo vocabulary (668 pieces + `extra_ids` T5 sentinels = 768 ids)."""
  if not os.path.exists(DEMO_SPM_PATH):
    raise FileNotFoundError(
        f"{DEMO_SPM_PATH} is missing; rebuild it with `python -m ul2flan.demo.vocab_build`.")
  return seqio.SentencePieceVocabulary(DEMO_SPM_PATH, extra_ids=extra_ids)


@functools.lru_cache(maxsize=None)
def sentencepiece_vocabulary(path: str, extra_ids: int = 0) -> seqio.SentencePieceVocabulary:
  """A user's SentencePiece model (e.g. a PaLM / T5 / Llama-style `.model` file)."""
  if not os.path.exists(path) and "://" not in path:
    raise FileNotFoundError(f"SentencePiece model {path!r} does not exist.")
  return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)


VOCABULARY_KINDS = ("demo", "sentencepiece", "hf")


@dataclasses.dataclass(frozen=True)
class VocabularySpec:
  """Which vocabulary: what `run.json` records so a trained model can be used without gin.

  `extra_ids` applies to the SentencePiece kinds; `sentinels`, `num_sentinels`, `embedding_size`
  and `reserved_pattern` to `hf` (`ul2flan.hf_vocab.token_layout.SentinelPolicy`), and `start`
  (which token starts a row: the one the tokenizer adds, or none; `ul2flan.hf_vocab.vocabulary`).
  """
  kind: str = "demo"
  path: str | None = None
  extra_ids: int = DEFAULT_EXTRA_IDS
  sentinels: str = "reserved"
  num_sentinels: int = DEFAULT_NUM_SENTINELS_WITHOUT_EXTRA_IDS
  embedding_size: int | None = None
  reserved_pattern: str = token_layout.LLAMA3_RESERVED_PATTERN
  start: str = "added"

  @classmethod
  def from_record(cls, record: Mapping[str, Any]) -> "VocabularySpec":
    """The spec a `run.json` records. A Hugging Face vocabulary recorded before `start` was
    (imports that started rows with the declared `bos_token`) keeps that rule."""
    record = dict(record)
    if record.get("kind") == "hf":
      record.setdefault("start", "declared")
    return cls(**record)

  def build(self) -> seqio.Vocabulary:
    if self.kind == "demo":
      return demo_vocabulary(self.extra_ids)
    if self.kind in ("sentencepiece", "hf") and not self.path:
      raise ValueError(f"get_vocabulary.kind = {self.kind!r} needs get_vocabulary.path")
    if self.kind == "sentencepiece":
      return sentencepiece_vocabulary(self.path, self.extra_ids)
    if self.kind == "hf":
      return hf_tokenizer.hf_vocabulary(self.path, token_layout.SentinelPolicy(
          self.sentinels, self.num_sentinels, self.embedding_size, self.reserved_pattern),
          self.start)
    raise ValueError(f"unknown vocabulary kind {self.kind!r}; use one of {VOCABULARY_KINDS}")


@gin.configurable
def get_vocabulary(kind: str = "demo", path: str | None = None,
                   extra_ids: int = DEFAULT_EXTRA_IDS, sentinels: str = "reserved",
                   num_sentinels: int = DEFAULT_NUM_SENTINELS_WITHOUT_EXTRA_IDS,
                   embedding_size: int | None = None,
                   reserved_pattern: str = token_layout.LLAMA3_RESERVED_PATTERN,
                   start: str = "added") -> seqio.Vocabulary:
  """The vocabulary every registered task and the model use; chosen by gin."""
  return VocabularySpec(kind, path, extra_ids, sentinels, num_sentinels, embedding_size,
                        reserved_pattern, start).build()


def configured_spec() -> VocabularySpec:
  """The `VocabularySpec` that gin's current `get_vocabulary` bindings describe."""
  values = {}
  for field in dataclasses.fields(VocabularySpec):
    try:
      values[field.name] = gin.query_parameter(f"get_vocabulary.{field.name}")
    except ValueError:  # unbound: the default
      pass
  return VocabularySpec(**values)


class ConfiguredVocabulary(seqio.Vocabulary):
  """`get_vocabulary()` looked up at every use (see the module docstring)."""

  def __init__(self):  # pylint: disable=super-init-not-called
    pass  # no state of its own: everything is delegated

  @property
  def resolved(self) -> seqio.Vocabulary:
    return get_vocabulary()

  # seqio.Vocabulary's public surface, delegated.
  @property
  def eos_id(self):
    return self.resolved.eos_id

  @property
  def pad_id(self):
    return self.resolved.pad_id

  @property
  def unk_id(self):
    return self.resolved.unk_id

  @property
  def extra_ids(self):
    return self.resolved.extra_ids

  @property
  def vocab_size(self):
    return self.resolved.vocab_size

  @property
  def _base_vocab_size(self):
    return self.resolved._base_vocab_size  # pylint: disable=protected-access

  def encode(self, s):
    return self.resolved.encode(s)

  def decode(self, ids):
    return self.resolved.decode(ids)

  def encode_tf(self, s):
    return self.resolved.encode_tf(s)

  def decode_tf(self, ids):
    return self.resolved.decode_tf(ids)

  def _encode(self, s):
    return self.resolved._encode(s)  # pylint: disable=protected-access

  def _decode(self, ids):
    return self.resolved._decode(ids)  # pylint: disable=protected-access

  def _encode_tf(self, s):
    return self.resolved._encode_tf(s)  # pylint: disable=protected-access

  def _decode_tf(self, ids):
    return self.resolved._decode_tf(ids)  # pylint: disable=protected-access

  def __getattr__(self, name):  # vocabulary-specific extras (e.g. sentinel_ids, tokenizer)
    if name.startswith("__"):
      raise AttributeError(name)
    return getattr(self.resolved, name)

  def __eq__(self, other):
    if isinstance(other, ConfiguredVocabulary):
      return True
    return self.resolved == other

  def __hash__(self):
    return hash(ConfiguredVocabulary)

  def __repr__(self):
    return f"ConfiguredVocabulary({self.resolved!r})"


def configured() -> ConfiguredVocabulary:
  return ConfiguredVocabulary()


def resolve(vocabulary: seqio.Vocabulary) -> seqio.Vocabulary:
  """The concrete vocabulary behind a `ConfiguredVocabulary` (others are returned as they are)."""
  return vocabulary.resolved if isinstance(vocabulary, ConfiguredVocabulary) else vocabulary


# ------------------------------------------------------------------------------------------------
# Sentinels.

def sentinel_ids(vocabulary: seqio.Vocabulary, num_sentinels: int | None = None
                 ) -> tuple[int, ...]:
  """The sentinel ids, sentinel k at index k.

  `num_sentinels` None: all the vocabulary offers (its own `sentinel_ids()`, else its extra ids,
  else the last 100 ids). A number asks for that many and fails if the vocabulary has fewer.
  """
  own = getattr(vocabulary, "sentinel_ids", None)
  if callable(own):
    ids = tuple(int(i) for i in own())
    if num_sentinels is not None:
      if num_sentinels > len(ids):
        raise ValueError(f"{num_sentinels} sentinels requested but the vocabulary offers "
                         f"{len(ids)}")
      ids = ids[:num_sentinels]
    return ids
  if num_sentinels is None:
    extra_ids = getattr(vocabulary, "extra_ids", 0) or 0
    num_sentinels = extra_ids if extra_ids > 0 else DEFAULT_NUM_SENTINELS_WITHOUT_EXTRA_IDS
  if num_sentinels < 1:
    raise ValueError(f"num_sentinels must be >= 1, got {num_sentinels}")
  if num_sentinels >= vocabulary.vocab_size:
    raise ValueError(f"num_sentinels={num_sentinels} leaves no ordinary token in a vocabulary of "
                     f"{vocabulary.vocab_size} ids")
  top = vocabulary.vocab_size - 1
  return tuple(range(top, top - num_sentinels, -1))


def adds_start_token(vocabulary: seqio.Vocabulary) -> bool:
  """Whether the model saw a start token (BOS) in the decoder's start slot when pre-trained.

  True for SentencePiece vocabularies (T5 / seqio: id 0 is the decoder's BOS) and for a Hugging
  Face tokenizer that adds a BOS; False for one that adds none (`ul2flan.row_layout`)."""
  return bool(getattr(resolve(vocabulary), "adds_start_token", True))


def sentinel_names(ids: Sequence[int]) -> dict[int, str]:
  """{id: "<extra_id_k>"}: how tools show sentinel k, whatever the vocabulary calls that id."""
  return {int(i): f"<extra_id_{k}>" for k, i in enumerate(ids)}
