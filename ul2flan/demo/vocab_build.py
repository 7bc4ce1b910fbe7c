"""Builds the embedded demo SentencePiece model from the generated corpus.

`python -m ul2flan.demo.vocab_build` rewrites `ul2flan/assets/demo_spm.model`. Training uses one
thread, which makes it deterministic (a test checks that a rebuild reproduces the shipped pieces).
T5 conventions: pad=0, eos=1, unk=2, no BOS; byte fallback so any text (e.g. benchmark prompts in
other languages) is encodable; digits split so arithmetic stays learnable at toy scale.
"""

from __future__ import annotations

import io
import os
import tempfile

import sentencepiece as spm

from ul2flan import vocabularies
from ul2flan.demo import world

DEMO_SPM_PIECES = 668  # + 100 sentinels = 768 ids (256 of the 668 are byte-fallback pieces)


def build_demo_spm(output_path: str = vocabularies.DEMO_SPM_PATH) -> str:
  with tempfile.TemporaryDirectory() as tmp:
    text_path = os.path.join(tmp, "corpus.txt")
    with open(text_path, "w") as f:
      for doc in world.corpus_documents("train"):
        f.write(doc + "\n")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        input=text_path, model_writer=model, vocab_size=DEMO_SPM_PIECES, model_type="bpe",
        character_coverage=1.0, byte_fallback=True, split_digits=True, num_threads=1,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, input_sentence_size=0,
        shuffle_input_sentence=False, minloglevel=2)
  os.makedirs(os.path.dirname(output_path) or ".", exist_ok=True)
  with open(output_path, "wb") as f:
    f.write(model.getvalue())
  return output_path


if __name__ == "__main__":
  print("wrote", build_demo_spm())
