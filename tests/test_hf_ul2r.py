"""A UL2R task over a JSONL corpus with the Hugging Face vocabulary and its sentinels.

Independent reference: the corpus tokenized by `tokenizers` (mapped by the stated id convention),
concatenated in file order; every example, with its spans put back, must be a piece of it.
"""

import argparse
import io
import json
import os

import pytest
import seqio
from tokenizers import Tokenizer

import hf_fixtures
from ul2flan.commands import inspect_task
from ul2flan.hf_vocab import vocabulary as hf_tokenizer
from ul2flan.ul2 import sources as ul2_sources
from ul2flan.ul2 import tasks as ul2_tasks

TASK = "hf_llama_like_ul2r"
MODE_TOKENS = ("[NLU]", "[NLG]", "[S2S]")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf_ul2r")
  dirs = hf_fixtures.build_all(str(root))
  corpus = hf_fixtures.corpus(300) + [hf_fixtures.SAMPLE_TEXT] * 5
  path = os.path.join(str(root), "corpus.jsonl")
  with open(path, "w", encoding="utf-8") as f:
    for text in corpus:
      f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
  vocab = hf_tokenizer.HfVocabulary(dirs["llama3"])
  # No held-out slice, so that train is the whole file, in order (the slice: test_corpus_sources).
  source = ul2_sources.jsonl_source(path, holdout_every=None)
  ul2_tasks.register_ul2_task(TASK, source, "UL2R", vocabulary=vocab,
                              inputs_length=128, targets_length=128, overwrite=True)
  tok = Tokenizer.from_file(os.path.join(dirs["llama3"], "tokenizer.json"))
  bos = tok.token_to_id("<|begin_of_text|>")
  stream = [bos if i == 0 else i for text in corpus
            for i in tok.encode(text, add_special_tokens=False).ids]
  return vocab, stream


def restore(inputs, targets, sentinels):
  """Puts the targets' spans back at their sentinels in the inputs (S: inputs then targets)."""
  spans, current = {}, None
  for t in targets:
    if t in sentinels:
      current = t
      spans[current] = []
    elif current is not None:
      spans[current].append(t)
  if not spans:
    return inputs + targets
  out = []
  for t in inputs:
    out.extend(spans[t] if t in sentinels else [t])
  return out


def test_ul2r_examples_use_the_vocabularys_sentinels_and_keep_the_text(setup):
  vocab, stream = setup
  sentinels = vocab.sentinel_ids()
  mode_ids = {m: vocab.encode(m) for m in MODE_TOKENS}
  text = "," + ",".join(map(str, stream)) + ","
  ds = seqio.get_mixture_or_task(TASK).get_dataset(None, split="train", shuffle=False, seed=3)
  seen_modes, used = set(), set()
  for ex in ds.take(60).as_numpy_iterator():
    inputs, targets = ex["inputs"].tolist(), ex["targets"].tolist()
    assert inputs[-1] == targets[-1] == vocab.eos_id and 0 not in inputs + targets
    mode = next(m for m, ids in mode_ids.items() if inputs[:len(ids)] == ids)
    seen_modes.add(mode)
    body = inputs[len(mode_ids[mode]):-1]
    in_sentinels = [t for t in body if t in sentinels]
    assert in_sentinels == list(sentinels[:len(in_sentinels)])  # sentinel k is the k-th span
    used |= set(in_sentinels)
    restored = restore(body, targets[:-1], set(sentinels))
    assert "," + ",".join(map(str, restored)) + "," in text
  assert seen_modes == set(MODE_TOKENS) and used


def inspect(*argv):
  parser = argparse.ArgumentParser()
  inspect_task.add_arguments(parser)
  out = io.StringIO()
  rc = inspect_task.run(parser.parse_args(list(argv)), out=out)
  return rc, out.getvalue()


def test_inspect_task_renders_the_hf_sentinels_and_mode_tokens(setup):
  rc, text = inspect(TASK, "--num_examples", "12")
  assert rc == 0 and text.count("--- example") == 12
  assert "<extra_id_0>" in text and "[S2S]" in text
  assert "reserved_special_token" not in text  # shown by their sentinel names
  assert "Crème brûlée" in text or "東京" in text or "Olga" in text
