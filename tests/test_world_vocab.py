"""The generated world/corpus is deterministic and consistent; the shipped vocabulary rebuilds."""

import re

import sentencepiece as spm

from ul2flan import vocabularies as vocab
from ul2flan.demo import vocab_build, world


def test_corpus_is_deterministic_and_splits_differ():
  a = world.corpus_documents("validation")
  assert a == world.corpus_documents("validation")
  assert set(a[:50]).isdisjoint(world.corpus_documents("train")[:50]) or a[:50] != \
      world.corpus_documents("train")[:50]
  assert len(world.corpus_documents("train")) == 20000


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
