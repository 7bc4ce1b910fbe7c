"""A `seqio.Vocabulary` over a Hugging Face `tokenizer.json` (the `tokenizers` library, no network).

Conventions (the model's ids are the tokenizer's with the swap described in `token_layout`):

* The start of a row follows what the tokenizer itself adds (`start = "added"`): a tokenizer
  whose post-processor (or `add_bos_token`) puts a BOS first gets that BOS in the decoder's start
  slot (model id 0); one that adds none (SmolLM2, Qwen) gets a hidden start slot
  (`ul2flan.row_layout`), whatever `bos_token` it declares. `start = "declared"` is the older
  rule (the declared `bos_token`, else a copy of EOS), kept so dirs imported with it still read.
* `encode` adds no special token, as `tokenizers.encode(text, add_special_tokens=False)`, and
  gives every id `tokenizers` gives, special tokens written in the text (a chat template's
  markers) included; it drops only an added BOS (the start slot holds it) and the tokens
  reserved as sentinels.
* `eos_id` is the tokenizer's EOS (`eos_token` of `tokenizer_config.json`); seqio appends it to
  every feature (`Feature(add_eos=True)`).
* `pad_id` is 0, as everywhere in seqio; 0 is also the first decoder input. Encode never
  produces it. The tokenizer's own padding token plays no part.
* `decode` is `tokenizers.decode(ids, skip_special_tokens=False)` after seqio's truncation at the
  first EOS, without padding, EOS and ids that are no token (sentinels outside `last_k`).
* Inside tf.data (`encode_tf` / `decode_tf`) the same Python calls run in `tf.numpy_function`;
  a 0-D string gives a 1-D int32 tensor, a batch of strings a `tf.RaggedTensor`.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf
import tokenizers

from ul2flan import paths
from ul2flan.hf_vocab import chat_template as chat_lib
from ul2flan.hf_vocab import token_layout

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
START_CONVENTIONS = ("added", "declared")  # see the module docstring
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


def tokenizer_file(path: str) -> str:
  """`path/tokenizer.json` (or `path` itself when it names the file); a clear error if absent.
  Local or a URL (`gs://...`: the files are read through `ul2flan.paths`)."""
  directory = paths.resolve(path)
  candidate = paths.join(path, TOKENIZER_FILE) if directory.is_dir() else str(path)
  if paths.resolve(candidate).is_file():
    return candidate
  hint = ""
  if directory.is_dir() and (directory / "tokenizer.model").exists():
    hint = (" It holds tokenizer.model: use get_vocabulary.kind='sentencepiece' with that file, "
            "or save a fast tokenizer (transformers' `save_pretrained`) to get tokenizer.json.")
  raise FileNotFoundError(
      f"no Hugging Face tokenizer at {candidate}: point get_vocabulary.path at a directory "
      f"holding {TOKENIZER_FILE} (a model saved with `save_pretrained`, or its tokenizer files), "
      f"or at the file itself; ul2flan never downloads.{hint}")


def _read_json(path: str) -> dict[str, Any]:
  try:
    value = json.loads(paths.resolve(path).read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e})") from None
  if not isinstance(value, dict):
    raise ValueError(f"{path} must hold a JSON object")
  return value


def _token_text(value: Any) -> str | None:
  """A special token entry of tokenizer_config.json: a string or an AddedToken dict."""
  if isinstance(value, Mapping):
    value = value.get("content")
  return value if isinstance(value, str) and value else None


def _leading_special_token(processor: Mapping[str, Any] | None,
                           tokenizer: tokenizers.Tokenizer) -> int | None:
  """The special token a `tokenizers` post-processor puts before a single sequence, if any."""
  if not processor:
    return None
  kind = processor.get("type")
  if kind == "Sequence":
    for inner in processor.get("processors", []):
      if (token := _leading_special_token(inner, tokenizer)) is not None:
        return token
    return None
  if kind in ("BertProcessing", "RobertaProcessing"):
    return int(processor["cls"][1])
  if kind == "TemplateProcessing":
    single = processor.get("single") or []
    first = single[0] if single else {}
    if "SpecialToken" in first:
      name = first["SpecialToken"]["id"]
      ids = processor.get("special_tokens", {}).get(name, {}).get("ids")
      return int(ids[0]) if ids else tokenizer.token_to_id(name)
  return None


class TokenizerFiles:
  """`tokenizer.json` and what `tokenizer_config.json` / `chat_template.jinja` beside it say."""

  def __init__(self, path: str):
    self.tokenizer_path = tokenizer_file(path)
    directory = str(paths.resolve(self.tokenizer_path).parent)
    self.config_path = paths.join(directory, CONFIG_FILE)
    self.config = (_read_json(self.config_path) if paths.resolve(self.config_path).is_file()
                   else {})
    try:
      self.tokenizer = tokenizers.Tokenizer.from_str(
          paths.resolve(self.tokenizer_path).read_text(encoding="utf-8"))
    except Exception as e:  # tokenizers raises a bare Exception on a malformed file
      raise ValueError(f"{self.tokenizer_path} is not a tokenizers file ({e})") from None
    self.tokenizer.no_truncation()  # a saved truncation / padding setting must not cut text
    self.tokenizer.no_padding()
    self.special_tokens = {k: t for k in SPECIAL_TOKEN_KEYS
                           if (t := _token_text(self.config.get(k))) is not None}
    template_path = paths.join(directory, CHAT_TEMPLATE_FILE)
    self.chat_template_source, self.chat_template_origin = None, None
    if paths.resolve(template_path).is_file():
      self.chat_template_source = paths.resolve(template_path).read_text(encoding="utf-8")
      self.chat_template_origin = template_path
    elif self.config.get("chat_template") is not None:
      self.chat_template_source = chat_lib.select_template(self.config["chat_template"],
                                                           self.config_path)
      self.chat_template_origin = self.config_path

  def token_id(self, key: str) -> int | None:
    """The id of special token `key` ('eos_token', ...); an error if the tokenizer lacks it."""
    text = self.special_tokens.get(key)
    if text is None:
      return None
    token = self.tokenizer.token_to_id(text)
    if token is None:
      raise ValueError(f"{self.config_path}: {key} {text!r} is not a token of "
                       f"{self.tokenizer_path}; fix {key} or the tokenizer")
    return token

  def added_start_token(self) -> int | None:
    """The id the tokenizer puts before every text (its BOS), or None if it adds none.

    `add_bos_token` in tokenizer_config.json decides when it is a bool (transformers rebuilds the
    post-processor from it); otherwise the post-processor's template for one sequence does.
    """
    flag = self.config.get("add_bos_token")
    if isinstance(flag, bool):
      return self.token_id("bos_token") if flag else None
    processor = json.loads(self.tokenizer.to_str()).get("post_processor")
    return _leading_special_token(processor, self.tokenizer)

  def chat_template(self) -> chat_lib.ChatTemplate | None:
    if self.chat_template_source is None:
      return None
    return chat_lib.ChatTemplate(self.chat_template_source, self.special_tokens,
                                 self.chat_template_origin)

  def ids(self, start: str = "added") -> token_layout.TokenizerIds:
    """The facts `token_layout.plan_layout` needs; `start` (see the module docstring) says which
    token starts a row."""
    if start not in START_CONVENTIONS:
      raise ValueError(f"start must be one of {START_CONVENTIONS}, got {start!r}")
    eos = self.token_id("eos_token")
    if eos is None:
      where = (f"{self.config_path} has no eos_token" if self.config
               else f"{self.config_path} is missing")
      raise ValueError(f"cannot tell the EOS token of {self.tokenizer_path}: {where}. Add "
                       f"{CONFIG_FILE} beside it with e.g. {{\"eos_token\": \"<|end_of_text|>\"}}.")
    added = {i: t.content for i, t in self.tokenizer.get_added_tokens_decoder().items()}
    roles = {i for i in (self.token_id(k) for k in SPECIAL_TOKEN_KEYS) if i is not None}
    if self.chat_template_source:  # the markers a chat template writes have a job too
      roles |= {i for i, text in added.items() if text in self.chat_template_source}
    size = max([self.tokenizer.get_vocab_size(with_added_tokens=True), *(i + 1 for i in added)])
    bos = self.added_start_token() if start == "added" else self.token_id("bos_token")
    return token_layout.TokenizerIds(
        origin=self.tokenizer_path, size=size, eos=eos, bos=bos,
        role_ids=frozenset(roles), added=added, hidden_start=start == "added" and bos is None)


class HfVocabulary(seqio.Vocabulary):
  """seqio vocabulary over a `tokenizer.json` (see the module docstring for the conventions)."""

  def __init__(self, path: str, policy: token_layout.SentinelPolicy = token_layout.SentinelPolicy(),
               start: str = "added"):
    super().__init__(extra_ids=0)
    self.path = path
    self.policy = policy
    self.start = start
    self.files = TokenizerFiles(path)
    self.tokenizer = self.files.tokenizer
    self.tokenizer_ids = self.files.ids(start)
    self.layout = token_layout.plan_layout(self.tokenizer_ids, policy)
    self.chat_template = self.files.chat_template()
    self._to_model = self.layout.tokenizer_to_model()
    self._to_tokenizer = self.layout.model_to_tokenizer()
    self._eos_id = int(self._to_model[self.tokenizer_ids.eos])
    unk = self.files.token_id("unk_token")
    self._unk_id = None if unk is None or self._to_model[unk] < 0 else int(self._to_model[unk])

  # ids ----------------------------------------------------------------------------------------

  @property
  def bos_id(self) -> int:
    return 0  # the decoder's start slot; its row is the BOS row, or hidden (`adds_start_token`)

  @property
  def adds_start_token(self) -> bool:
    """Whether the model was pre-trained with a token in the start slot (`row_layout`)."""
    return not self.tokenizer_ids.hidden_start

  @property
  def eos_id(self) -> int:
    return self._eos_id

  @property
  def unk_id(self) -> int | None:
    return self._unk_id

  @property
  def _base_vocab_size(self) -> int:
    return self.layout.vocab_size

  def sentinel_ids(self) -> tuple[int, ...]:
    """Sentinel k at index k (read by `ul2flan.vocabularies.sentinel_ids`)."""
    return self.layout.sentinel_ids

  # Python -------------------------------------------------------------------------------------

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    """int32 model ids of each text (no special token added; BOS and sentinels dropped)."""
    encodings = self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
    out = []
    for encoding in encodings:
      ids = self._to_model[np.asarray(encoding.ids, np.int64)]
      out.append(ids[ids != token_layout.DROPPED])
    return out

  def _encode(self, s: str) -> list[int]:
    return self.encode_batch([s])[0].tolist()

  def _tokenizer_ids(self, ids: Iterable[int]) -> list[int]:
    ids = np.asarray(list(ids), np.int64).reshape(-1)
    ids = ids[(ids > 0) & (ids < self.layout.vocab_size) & (ids != self._eos_id)]
    hf = self._to_tokenizer[ids]
    return hf[hf != token_layout.DROPPED].tolist()

  def _decode(self, ids: Iterable[int]) -> str:
    return self.tokenizer.decode(self._tokenizer_ids(ids), skip_special_tokens=False)

  # tf.data ------------------------------------------------------------------------------------

  def _encode_one(self, text: bytes) -> np.ndarray:
    return self.encode_batch([text.decode("utf-8")])[0].astype(np.int32)

  def _encode_strings(self, strings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    encoded = self.encode_batch([s.decode("utf-8") for s in strings])
    lengths = np.array([len(e) for e in encoded], np.int64)
    flat = np.concatenate(encoded) if encoded else np.zeros([0], np.int32)
    return flat.astype(np.int32), lengths

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor | tf.RaggedTensor:
    s = tf.convert_to_tensor(s, tf.string)
    if s.shape.rank is None:
      raise ValueError("HfVocabulary.encode_tf needs a string tensor of known rank")
    if s.shape.rank == 0:  # what seqio's tokenize passes: one document
      ids = tf.numpy_function(self._encode_one, [s], tf.int32, stateful=False)
      ids.set_shape([None])
      return ids
    flat, lengths = tf.numpy_function(self._encode_strings, [tf.reshape(s, [-1])],
                                      (tf.int32, tf.int64), stateful=False)
    flat.set_shape([None])
    ragged = tf.RaggedTensor.from_row_lengths(flat, tf.ensure_shape(lengths, [None]))
    outer = tf.shape(s, out_type=tf.int64)
    for axis in range(s.shape.rank - 1, 0, -1):  # restore the outer dimensions, innermost first
      ragged = tf.RaggedTensor.from_uniform_row_length(ragged, outer[axis])
    return ragged

  def _decode_rows(self, ids: np.ndarray) -> np.ndarray:
    rows = ids.reshape(int(np.prod(ids.shape[:-1])), ids.shape[-1])
    texts = [self._decode(row).encode("utf-8") for row in rows]
    return np.array(texts, dtype=object).reshape(ids.shape[:-1])

  def _decode_tf(self, ids: tf.Tensor | tf.RaggedTensor) -> tf.Tensor:
    if isinstance(ids, tf.RaggedTensor):
      ids = ids.to_tensor()  # padding with 0, which decode drops
    ids = tf.convert_to_tensor(ids)
    if ids.shape.rank is None or ids.shape.rank < 1:
      raise ValueError("HfVocabulary.decode_tf needs ids of rank >= 1")
    text = tf.numpy_function(self._decode_rows, [ids], tf.string, stateful=False)
    text.set_shape(ids.shape[:-1])
    return text

  # identity -----------------------------------------------------------------------------------

  def __eq__(self, other) -> bool:
    return (isinstance(other, HfVocabulary) and self.files.tokenizer_path ==
            other.files.tokenizer_path and self.policy == other.policy
            and self.start == other.start)

  def __hash__(self) -> int:
    return hash((self.files.tokenizer_path, self.policy, self.start))

  def __repr__(self) -> str:
    return (f"HfVocabulary({self.files.tokenizer_path!r}, {self.policy.kind}, "
            f"{self.layout.vocab_size} ids)")


@functools.lru_cache(maxsize=None)
def hf_vocabulary(path: str, policy: token_layout.SentinelPolicy = token_layout.SentinelPolicy(),
                  start: str = "added") -> HfVocabulary:
  """The vocabulary of the tokenizer at `path` (a directory or its tokenizer.json), cached."""
  return HfVocabulary(path, policy, start)
