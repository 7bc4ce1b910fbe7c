"""The tokenizer files of a Hugging Face model dir: checked and copied on import; on export,
copied back with the sentinel tokens added so infilling prompts work from transformers. Dirs may
be local or in a bucket (`ul2flan.paths`)."""

from __future__ import annotations

import json
from typing import Mapping, Sequence

from ul2flan import paths

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
TOKENIZER_FILES = (TOKENIZER_JSON, TOKENIZER_CONFIG, "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja",
                   "chat_template.json")
# Copied along with the tokenizer: export reads them as the template of its config files.
MODEL_CONFIG_FILES = ("config.json", "generation_config.json")


def check_tokenizer(hf_dir: str) -> None:
  directory = paths.resolve(hf_dir)
  if not (directory / TOKENIZER_JSON).exists():
    present = [f for f in TOKENIZER_FILES if (directory / f).exists()]
    found = f" (it has {', '.join(present)})" if present else ""
    raise FileNotFoundError(
        f"{hf_dir} has no {TOKENIZER_JSON}{found}: ul2flan reads the fast-tokenizer file. Write "
        f"it with `AutoTokenizer.from_pretrained(dir).save_pretrained(dir)` and import again.")


def copy_files(src_dir: str, dst_dir: str, names: Sequence[str]) -> list[str]:
  """Copies those of `names` that `src_dir` has; returns them."""
  if not paths.is_url(dst_dir):
    paths.resolve(dst_dir).mkdir(parents=True, exist_ok=True)
  copied = []
  for name in names:
    if paths.resolve(src_dir).joinpath(name).exists():
      paths.copy_file(paths.join(src_dir, name), paths.join(dst_dir, name))
      copied.append(name)
  return copied


def sentinel_token(k: int) -> str:
  return f"<extra_id_{k}>"


def add_sentinels(tokenizer_dir: str, sentinel_ids: Sequence[int],
                  other_names: Mapping[int, str] | None = None) -> dict[str, str]:
  """Gives every sentinel id a token. Ids the tokenizer already has (e.g. reserved special
  tokens) keep theirs; ids past its end get `<extra_id_k>` (ids in `other_names` that name, and
  any other id between the tokenizer's end and a sentinel an `<unused_j>` filler: the tokenizers
  library assigns added tokens consecutive ids). Returns {"<extra_id_k>": the token at sentinel
  k's id}."""
  other_names = dict(other_names or {})
  path = paths.resolve(tokenizer_dir) / TOKENIZER_JSON
  spec = json.loads(path.read_text(encoding="utf-8"))
  vocab = spec["model"].get("vocab") or {}
  if isinstance(vocab, dict):  # BPE / WordPiece / WordLevel: token -> id
    known = {int(i): t for t, i in vocab.items()}
  else:  # Unigram: [[piece, score], ...] in id order
    known = {i: entry[0] for i, entry in enumerate(vocab)}
  known.update({int(t["id"]): t["content"] for t in spec.get("added_tokens", [])})
  size = max(known) + 1 if known else 0
  names, added = {}, []
  by_id = {int(i): k for k, i in enumerate(sentinel_ids)}
  for token_id in range(size, max(list(by_id) + list(other_names) + [size - 1]) + 1):
    k = by_id.get(token_id)
    content = (sentinel_token(k) if k is not None else
               other_names.get(token_id, f"<unused_{token_id - size}>"))
    added.append({"id": token_id, "content": content, "single_word": False, "lstrip": False,
                  "rstrip": False, "normalized": False, "special": True})
  for token_id, k in by_id.items():
    names[sentinel_token(k)] = known.get(token_id, sentinel_token(k))
  if added:
    spec.setdefault("added_tokens", []).extend(added)
    path.write_text(json.dumps(spec, ensure_ascii=False, indent=1), encoding="utf-8")
    _add_to_tokenizer_config(tokenizer_dir, added)
  return names


def _add_to_tokenizer_config(tokenizer_dir: str, added: list[dict]) -> None:
  """transformers also lists added tokens in tokenizer_config.json; keep the two consistent."""
  path = paths.resolve(tokenizer_dir) / TOKENIZER_CONFIG
  config = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
  decoder = config.setdefault("added_tokens_decoder", {})
  for token in added:
    decoder[str(token["id"])] = {k: v for k, v in token.items() if k != "id"}
  path.write_text(json.dumps(config, ensure_ascii=False, indent=1), encoding="utf-8")
