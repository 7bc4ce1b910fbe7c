"""Sentinel policies and embedding rows of the Hugging Face vocabulary.

References: the `tokenizers` library on the same files (which ids text encodes to, which tokens
are special), and NumPy float64 means computed here from the tokenizer's own token list.
"""

import os
import re

import numpy as np
import pytest
from tokenizers import Tokenizer

import hf_fixtures
from ul2flan import vocabularies
from ul2flan.hf_vocab import token_layout
from ul2flan.hf_vocab import vocabulary as hf_tokenizer

RESERVED = re.compile(r"<\|reserved_special_token_(\d+)\|>")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  return hf_fixtures.build_all(str(tmp_path_factory.mktemp("hf_sent")))


def tokenizer(path):
  return Tokenizer.from_file(os.path.join(path, "tokenizer.json"))


def produced_ids(vocab):
  """Every model id that the fixtures' corpus and the sample text encode to."""
  return set().union(*map(set, vocab.encode_batch(hf_fixtures.corpus() +
                                                  [hf_fixtures.SAMPLE_TEXT])))


def special_model_ids(vocab, tok):
  """Model ids of the tokenizer's special tokens that have a job (not reserved ones)."""
  table = vocab.layout.tokenizer_to_model()
  ids = {i for i, t in tok.get_added_tokens_decoder().items() if not RESERVED.fullmatch(t.content)}
  return {int(table[i]) for i in ids if table[i] >= 0} | {vocab.eos_id}


POLICIES = [("llama3", "reserved"), ("llama3", "new_rows"), ("qwen", "unused_rows"),
            ("qwen", "new_rows"), ("qwen", "reserved_like_qwen"), ("sentencepiece", "new_rows"),
            ("llama3", "unused_rows")]


def make_policy(name, kind, dirs, num_sentinels=100):
  if kind == "reserved_like_qwen":  # Qwen has no reserved tokens: unused rows instead
    kind = "unused_rows"
  rows = None
  if kind == "unused_rows":
    size = tokenizer(dirs[name]).get_vocab_size()
    rows = hf_fixtures.qwen_embedding_size(dirs[name]) if name == "qwen" else size + 101
  return token_layout.SentinelPolicy(kind, num_sentinels=num_sentinels, embedding_size=rows)


@pytest.mark.parametrize("name,kind", POLICIES)
def test_no_sentinel_is_a_real_or_special_token(dirs, name, kind):
  vocab = hf_tokenizer.HfVocabulary(dirs[name], make_policy(name, kind, dirs))
  tok = tokenizer(dirs[name])
  sentinels = vocab.sentinel_ids()
  assert len(sentinels) == len(set(sentinels)) == 100
  assert not set(sentinels) & produced_ids(vocab)
  assert not set(sentinels) & special_model_ids(vocab, tok)
  assert 0 not in sentinels and max(sentinels) < vocab.vocab_size
  if kind != "reserved":
    assert min(sentinels) >= tok.get_vocab_size()  # rows past the tokenizer
  assert vocabularies.sentinel_ids(vocab) == sentinels  # the one sentinel convention


def test_reserved_sentinels_are_the_named_tokens_in_their_numbered_order(dirs):
  vocab = hf_tokenizer.HfVocabulary(dirs["llama3"])
  tok = tokenizer(dirs["llama3"])
  expected = [tok.token_to_id(f"<|reserved_special_token_{k}|>") for k in range(100)]
  assert list(vocab.sentinel_ids()) == expected
  assert vocab.vocab_size == tok.get_vocab_size()  # no new row
  # A reserved token written in text never turns into a sentinel.
  assert vocab.encode("a <|reserved_special_token_0|> b") == vocab.encode("a  b")


def test_last_k_takes_the_tokenizers_last_ids_top_down(dirs):
  vocab = hf_tokenizer.HfVocabulary(dirs["sentencepiece"],
                                    token_layout.SentinelPolicy("last_k", num_sentinels=10))
  size = tokenizer(dirs["sentencepiece"]).get_vocab_size()
  assert vocab.sentinel_ids() == tuple(range(size - 1, size - 11, -1))
  assert vocab.layout.untrained_ids == ()  # real, trained tokens (U-PaLM's choice)


def test_last_k_refuses_tokens_with_a_job(dirs, tmp_path):
  # The Llama-like tokenizer's chat markers sit among the first special tokens; ask for all of them.
  n = len(tokenizer(dirs["llama3"]).get_added_tokens_decoder())
  with pytest.raises(ValueError, match=r"would take ids .* tokens with a job"):
    hf_tokenizer.HfVocabulary(dirs["llama3"], token_layout.SentinelPolicy("last_k",
                                                                           num_sentinels=n))


def test_new_rows_grow_the_vocabulary_past_the_tokenizer_or_the_embedding(dirs):
  size = tokenizer(dirs["llama3"]).get_vocab_size()
  vocab = hf_tokenizer.HfVocabulary(dirs["llama3"], token_layout.SentinelPolicy("new_rows", 8))
  assert vocab.sentinel_ids() == tuple(range(size, size + 8)) and vocab.vocab_size == size + 8
  vocab = hf_tokenizer.HfVocabulary(dirs["llama3"], token_layout.SentinelPolicy(
      "new_rows", 8, embedding_size=size + 50))
  assert vocab.sentinel_ids()[0] == size + 50 and vocab.vocab_size == size + 58


# ------------------------------------------------------------------------------------------------
# Embedding rows.

def checkpoint_rows(num_rows, dim=6, seed=0):
  rng = np.random.default_rng(seed)
  rows = rng.normal(size=(num_rows, dim)).astype(np.float32)
  return rows


def test_llama_like_rows_follow_their_tokens_and_reserved_rows_get_the_trained_mean(dirs):
  vocab = hf_tokenizer.HfVocabulary(dirs["llama3"])
  tok = tokenizer(dirs["llama3"])
  hf = checkpoint_rows(tok.get_vocab_size())
  reserved = [i for i, t in tok.get_added_tokens_decoder().items() if RESERVED.fullmatch(t.content)]
  hf[reserved] = 1e3  # garbage, as in released checkpoints
  model = token_layout.model_embedding(hf, vocab.layout)
  assert model.shape == (vocab.vocab_size, 6) and model.dtype == np.float32
  # Every token's row moves with it: model row of a token == checkpoint row of the same token.
  for text in hf_fixtures.SAMPLE_TEXT.split():
    np.testing.assert_array_equal(model[vocab.encode(text)],
                                  hf[tok.encode(text, add_special_tokens=False).ids])
  bos = tok.token_to_id("<|begin_of_text|>")
  np.testing.assert_array_equal(model[0], hf[bos])  # the decoder's first input is BOS
  trained = np.setdiff1d(np.arange(tok.get_vocab_size()), reserved)
  mean = hf[trained].astype(np.float64).mean(axis=0)
  np.testing.assert_allclose(model[list(vocab.sentinel_ids())], np.tile(mean, (100, 1)),
                             rtol=1e-6)
  np.testing.assert_allclose(model[reserved[-1]], mean, rtol=1e-6)  # unused reserved rows too
  unchanged = token_layout.model_embedding(hf, vocab.layout, reinit=False)
  np.testing.assert_array_equal(token_layout.tokenizer_embedding(unchanged, vocab.layout), hf)


@pytest.mark.parametrize("start", ["added", "declared"])
def test_qwen_like_unused_rows_reinit_and_row_zero(dirs, start):
  """Qwen adds no BOS: row 0 (the start slot, hidden from attention) holds the trained rows' mean;
  under the older rule (`start="declared"`) it was a copy of the EOS row."""
  rows = hf_fixtures.qwen_embedding_size(dirs["qwen"])
  vocab = hf_tokenizer.HfVocabulary(dirs["qwen"], token_layout.SentinelPolicy(
      "unused_rows", embedding_size=rows), start)
  tok = tokenizer(dirs["qwen"])
  size = tok.get_vocab_size()
  hf = checkpoint_rows(rows, seed=1)
  hf[size:] = 0.0  # padding rows of a released checkpoint
  model = token_layout.model_embedding(hf, vocab.layout)
  assert model.shape == (rows, 6)
  for text in ("!", "Hello!", "東京 🤖"):
    np.testing.assert_array_equal(model[vocab.encode(text)],
                                  hf[tok.encode(text, add_special_tokens=False).ids])
  mean = hf[:size].astype(np.float64).mean(axis=0)
  if start == "declared":
    np.testing.assert_array_equal(model[0], hf[tok.token_to_id("<|im_end|>")])
  else:
    np.testing.assert_allclose(model[0], mean, rtol=1e-6)
  free = vocab.layout.swap[1]  # holds token 0 ("!")
  untrained = [i for i in range(size, rows) if i != free]
  np.testing.assert_allclose(model[untrained], np.tile(mean, (len(untrained), 1)), rtol=1e-6)
  np.testing.assert_array_equal(model[free], hf[0])


def test_new_rows_are_added_to_a_checkpoint_with_the_tokenizers_rows(dirs):
  vocab = hf_tokenizer.HfVocabulary(dirs["sentencepiece"], token_layout.SentinelPolicy(
      "new_rows", 4))
  size = tokenizer(dirs["sentencepiece"]).get_vocab_size()
  hf = checkpoint_rows(size, seed=2)
  model = token_layout.model_embedding(hf, vocab.layout)
  assert model.shape == (size + 4, 6)
  np.testing.assert_allclose(model[size:], np.tile(hf.astype(np.float64).mean(0), (4, 1)),
                             rtol=1e-6)
  with pytest.raises(ValueError, match="embedding has 10 rows.*needs at least"):
    token_layout.model_embedding(hf[:10], vocab.layout)
  with pytest.raises(ValueError, match="at most .* Set the vocabulary's embedding_size"):
    token_layout.model_embedding(checkpoint_rows(size + 9), vocab.layout)


# ------------------------------------------------------------------------------------------------
# Layouts of tokenizer shapes the fixtures do not cover.

def ids(size, eos, bos, added=None, roles=()):
  return token_layout.TokenizerIds(origin="t.json", size=size, eos=eos, bos=bos,
                                   role_ids=frozenset({eos, *([bos] if bos is not None else []),
                                                       *roles}), added=added or {})


def test_bos_equal_to_eos_at_id_zero_moves_eos_off_padding():
  """GPT-NeoX style: <|endoftext|> is id 0 and both BOS and EOS."""
  layout = token_layout.plan_layout(ids(50, eos=0, bos=0),
                                    token_layout.SentinelPolicy("new_rows", 3))
  assert layout.swap == (0, 50) and layout.start_copies == 0
  assert layout.tokenizer_to_model()[0] == 50  # EOS is model id 50, never padding
  assert layout.sentinel_ids == (51, 52, 53) and layout.vocab_size == 54
  rows = np.arange(50, dtype=np.float32)[:, None]
  model = token_layout.model_embedding(rows, layout)
  assert model[0, 0] == 0.0 and model[50, 0] == 0.0  # both hold the EOS row (tokenizer row 0)
  np.testing.assert_allclose(model[51:, 0], np.mean(np.arange(50)))


def test_bos_already_at_id_zero_stays_and_is_dropped_from_text():
  layout = token_layout.plan_layout(ids(40, eos=2, bos=0), token_layout.SentinelPolicy("last_k", 5))
  assert layout.swap is None and layout.start_copies is None and layout.dropped_ids == (0,)
  assert layout.sentinel_ids == (39, 38, 37, 36, 35) and layout.vocab_size == 40
  table = layout.tokenizer_to_model()
  assert table[0] == token_layout.DROPPED and (table[1:] == np.arange(1, 40)).all()
