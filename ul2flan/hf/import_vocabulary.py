"""The vocabulary an imported model trains with: which tokenizer files, which sentinel policy.

ul2flan's ids are the tokenizer's with BOS and id 0 swapped and sentinels placed by a policy
(`token_layout`); the importer permutes the embedding rows accordingly. The policy is chosen here:

* A Hugging Face dir written by `ul2flan export-hf` carries the tokenizer ul2flan trained with
  (`ul2flan_tokenizer/`) and its vocabulary settings (in `ul2flan.json`): re-importing it rebuilds
  exactly that layout, and keeps every row as it is (they were trained).
* Otherwise `sentinels` names the policy, or "auto" takes the first that fits: `reserved` (the
  tokenizer's reserved tokens, Llama 3), `unused_rows` (embedding rows past the tokenizer, Qwen),
  `new_rows` (new rows). Rows that never held a trained embedding are set to the mean of the
  trained ones (`reinit`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ul2flan import paths
from ul2flan.hf import output_dir, tokenizer_files
from ul2flan.hf_vocab import token_layout
from ul2flan.hf_vocab import vocabulary as hf_tokenizer

AUTO = "auto"
AUTO_ORDER = ("reserved", "unused_rows", "new_rows")
EXPORT_TOKENIZER_DIR = "ul2flan_tokenizer"  # inside an export: the tokenizer ul2flan trained with


@dataclasses.dataclass(frozen=True)
class ImportVocabulary:
  tokenizer_dir: str  # the tokenizer files the model dir gets a copy of (local or a URL)
  settings: dict[str, Any]  # VocabularySpec fields besides kind and path
  layout: token_layout.TokenLayout
  reinit: bool  # set never-trained rows to the trained rows' mean (released checkpoints only)


def _plan(tokenizer_dir: str, settings: dict[str, Any]) -> token_layout.TokenLayout:
  policy = token_layout.SentinelPolicy(settings["sentinels"], settings["num_sentinels"],
                                       settings["embedding_size"], settings["reserved_pattern"])
  # HfVocabulary reads local files: a tokenizer in a bucket is planned from a local copy of its
  # (small) files, and errors name the files in the bucket.
  with paths.local_copy(tokenizer_dir, tokenizer_files.TOKENIZER_FILES) as local_dir:
    try:
      return hf_tokenizer.HfVocabulary(local_dir, policy, settings["start"]).layout
    except (ValueError, FileNotFoundError) as e:
      if not paths.is_url(tokenizer_dir):
        raise
      raise type(e)(str(e).replace(local_dir, tokenizer_dir)) from None


def plan(hf_dir: str, embedding_rows: int, sentinels: str = AUTO, num_sentinels: int = 100,
         reserved_pattern: str = token_layout.LLAMA3_RESERVED_PATTERN) -> ImportVocabulary:
  """The vocabulary for importing `hf_dir`, whose embedding has `embedding_rows` rows."""
  marker = output_dir.read_marker(hf_dir)
  if marker and marker.get("kind") == "export-hf" and "vocabulary" in marker:
    tokenizer_dir = paths.join(hf_dir, EXPORT_TOKENIZER_DIR)
    tokenizer_files.check_tokenizer(tokenizer_dir)
    # An export from before the start convention was recorded used the declared bos_token.
    settings = {"start": "declared", **marker["vocabulary"]}
    return ImportVocabulary(tokenizer_dir, settings, _plan(tokenizer_dir, settings), False)
  tokenizer_files.check_tokenizer(hf_dir)
  if sentinels != AUTO and sentinels not in token_layout.SENTINEL_POLICIES:
    raise ValueError(f"sentinels must be {AUTO!r} or one of {token_layout.SENTINEL_POLICIES}, "
                     f"got {sentinels!r}")
  error = None
  for kind in (AUTO_ORDER if sentinels == AUTO else (sentinels,)):
    settings = dict(sentinels=kind, num_sentinels=num_sentinels, embedding_size=embedding_rows,
                    reserved_pattern=reserved_pattern, start="added")
    try:
      return ImportVocabulary(hf_dir, settings, _plan(hf_dir, settings), True)
    except ValueError as e:
      if sentinels != AUTO:
        raise
      error = e
  raise ValueError(f"no sentinel policy fits {hf_dir} ({error})")
