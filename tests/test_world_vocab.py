"""The generated world/corpus is deterministic and consistent; the shipped vocabulary rebuilds."""

import hashlib
import os
import re
import subprocess
import sys

import sentencepiece as spm

from ul2flan import vocabularies as vocab
from ul2flan.demo import vocab_build, world


def test_corpus_is_deterministic_across_processes_and_splits_differ():
  """Every machine must generate byte-identical data: compare with a fresh interpreter whose
  hash seed differs, and check the validation split is not the train split's stream."""
  code = ("import hashlib; from ul2flan.demo import world; "
          "print(hashlib.sha256('\\x00'.join(world.corpus_documents('validation')).encode())"
          ".hexdigest())")
  env = dict(os.environ, PYTHONHASHSEED="12345")
  other = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
  validation = world.corpus_documents("validation")
  assert other == hashlib.sha256("\x00".join(validation).encode()).hexdigest()
  train = world.corpus_documents("train")
  assert len(train) == 20000 and len(validation) == 500
  # Short templated documents may coincide by chance, but the streams are different.
  assert sum(d in set(train) for d in validation) < 0.1 * len(validation)
  assert validation[:20] != train[:20]


def test_corpus_facts_agree_with_the_world():
  w = world.make_world()
  for doc in world.corpus_documents("validation"):
    for name, city in re.findall(r"(\w+) lives in (\w+)\.", doc):
      assert w.person(name).city == city
    for name, job in re.findall(r"(\w+) works as a (\w+)\.", doc):
      assert w.person(name).job == job


def test_arithmetic_episodes_are_right():
  import random
  w = world.make_world()
  rng = random.Random(0)
  for _ in range(200):
    ep = world.arithmetic_episode(w, rng)
    nums = [int(x) for x in re.findall(r"\d+", ep.context)]
    expected = nums[0] + nums[1] - nums[2] if "gives" in ep.context else nums[0] * nums[1]
    assert ep.answer == str(expected)


def test_shipped_vocabulary_matches_a_rebuild(tmp_path):
  rebuilt = vocab_build.build_demo_spm(str(tmp_path / "spm.model"))
  a, b = spm.SentencePieceProcessor(), spm.SentencePieceProcessor()
  a.Load(vocab.DEMO_SPM_PATH)
  b.Load(rebuilt)
  assert [a.IdToPiece(i) for i in range(a.GetPieceSize())] == \
      [b.IdToPiece(i) for i in range(b.GetPieceSize())]


def test_demo_vocabulary_conventions():
  v = vocab.get_vocabulary()
  assert v.vocab_size == 768 and v.pad_id == 0 and v.eos_id == 1
  text = "Olga lives in Rome. 12 + 7 = 19. Ünïcode 北京"
  assert v.decode(v.encode(text)) == text  # byte fallback covers any text
  assert v.decode([v.vocab_size - 1]) == "<extra_id_0>"
