"""Vocabularies: the embedded demo SentencePiece model, or any SentencePiece model by path.

The demo model is trained on the generated corpus (`ul2flan.world`) with one thread, which makes the
training deterministic; the trained file is shipped in `ul2flan/assets/` and `build_demo_spm()`
rebuilds it (a test checks that the rebuild reproduces the shipped file's pieces).
T5 conventions: pad=0, eos=1, unk=2, no BOS; byte fallback so any text (e.g. benchmark prompts in
other languages) is encodable; digits split so arithmetic stays learnable at toy scale.
"""

from __future__ import annotations

import functools
import io
import os
import tempfile

import gin
import seqio

ASSETS_DIR = os.path.join(os.path.dirname(__file__), "assets")
DEMO_SPM_PATH = os.path.join(ASSETS_DIR, "demo_spm.model")
DEMO_SPM_PIECES = 668  # + 100 sentinels = 768 ids; the corpus supports at most ~714 pieces
DEFAULT_EXTRA_IDS = 100


def build_demo_spm(output_path: str = DEMO_SPM_PATH) -> str:
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  from ul2flan import world  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory() as tmp:
    text_path = os.path.join(tmp, "corpus.txt")
    with open(text_path, "w") as f:
      for doc in world.corpus_documents("train"):
        f.write(doc + "\n")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        input=text_path, model_writer=model, vocab_size=DEMO_SPM_PIECES, model_type="unigram",
        character_coverage=1.0, byte_fallback=True, split_digits=True, num_threads=1,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, input_sentence_size=0,
        shuffle_input_sentence=False, minloglevel=2)
  os.makedirs(os.path.dirname(output_path) or ".", exist_ok=True)
  with open(output_path, "wb") as f:
    f.write(model.getvalue())
  return output_path


@gin.configurable
@functools.lru_cache(maxsize=None)
def demo_vocabulary(extra_ids: int = DEFAULT_EXTRA_IDS) -> seqio.SentencePieceVocabulary:
  """The embedded demo vocabulary (668 pieces + `extra_ids` T5 sentinels = 768 ids)."""
  if not os.path.exists(DEMO_SPM_PATH):
    raise FileNotFoundError(
        f"{DEMO_SPM_PATH} is missing; rebuild it with `python -m ul2flan.vocab`.")
  return seqio.SentencePieceVocabulary(DEMO_SPM_PATH, extra_ids=extra_ids)


@gin.configurable
def sentencepiece_vocabulary(path: str = gin.REQUIRED,
                             extra_ids: int = 0) -> seqio.SentencePieceVocabulary:
  """A user's SentencePiece model (e.g. a PaLM / T5 / Llama-style `.model` file)."""
  if not os.path.exists(path) and "://" not in path:
    raise FileNotFoundError(f"SentencePiece model {path!r} does not exist.")
  return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)


@gin.configurable
def get_vocabulary(kind: str = "demo", path: str | None = None,
                   extra_ids: int = DEFAULT_EXTRA_IDS) -> seqio.Vocabulary:
  """The vocabulary every registered task uses; chosen by gin (`get_vocabulary.kind`)."""
  if kind == "demo":
    return demo_vocabulary(extra_ids)
  if kind == "sentencepiece":
    return sentencepiece_vocabulary(path, extra_ids)
  raise ValueError(f"unknown vocabulary kind {kind!r}; use 'demo' or 'sentencepiece'")


if __name__ == "__main__":
  print("wrote", build_demo_spm())
