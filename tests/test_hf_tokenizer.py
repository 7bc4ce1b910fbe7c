"""The Hugging Face vocabulary against `tokenizers` itself: ids, text, tf.data, seqio conventions.

The reference is the `tokenizers` library on the same tokenizer.json, with the id convention
written out here independently: tokenizer id 0 lives at the BOS id (Llama-like, SentencePiece-like)
or at the first free id (Qwen-like, no BOS), BOS is dropped, everything else keeps its id.
"""

import dataclasses
import json
import os
import shutil

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf
from tokenizers import Tokenizer

import hf_fixtures
from ul2flan import vocabularies
from ul2flan.hf_vocab import token_layout
from ul2flan.hf_vocab import vocabulary as hf_tokenizer

LINES = hf_fixtures.SAMPLE_TEXT.splitlines(keepends=True) + [
    hf_fixtures.SAMPLE_TEXT, "!", "!!! wow!", "", " ", "\n\n"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  return hf_fixtures.build_all(str(tmp_path_factory.mktemp("hf_tok")))


def policy_for(name, dirs):
  if name == "qwen":
    return token_layout.SentinelPolicy(
        "unused_rows", embedding_size=hf_fixtures.qwen_embedding_size(dirs["qwen"]))
  if name == "sentencepiece":
    return token_layout.SentinelPolicy("new_rows")
  return token_layout.SentinelPolicy("reserved")


@pytest.fixture(scope="module", params=["llama3", "qwen", "sentencepiece"])
def case(request, dirs):
  name = request.param
  vocab = hf_tokenizer.HfVocabulary(dirs[name], policy_for(name, dirs))
  tok = Tokenizer.from_file(os.path.join(dirs[name], "tokenizer.json"))
  return name, vocab, tok


def reference_ids(name, tok, text):
  """`tokenizers` ids under the stated convention (see the module docstring)."""
  ids = tok.encode(text, add_special_tokens=False).ids
  if name == "llama3":
    bos = tok.token_to_id("<|begin_of_text|>")
    return [bos if i == 0 else i for i in ids if i != bos]
  if name == "sentencepiece":  # <unk>=0 and <s>=1 trade places
    return [1 if i == 0 else i for i in ids if i != 1]
  first_free = tok.get_vocab_size()  # Qwen-like: the first unused row past the tokenizer
  return [first_free if i == 0 else i for i in ids]


def test_encode_and_decode_match_tokenizers_in_python(case):
  name, vocab, tok = case
  for text in LINES:
    ids = vocab.encode(text)
    assert ids == reference_ids(name, tok, text)
    assert 0 not in ids
    expected_text = tok.decode(tok.encode(text, add_special_tokens=False).ids)
    assert vocab.decode(ids) == expected_text
  assert vocab.decode(vocab.encode(hf_fixtures.SAMPLE_TEXT)) == hf_fixtures.SAMPLE_TEXT


def test_encode_and_decode_match_tokenizers_inside_tf_data(case):
  name, vocab, tok = case
  features = {"text": seqio.Feature(vocab, add_eos=False)}
  ds = tf.data.Dataset.from_tensor_slices({"text": LINES})
  ds = seqio.preprocessors.tokenize(ds, features)
  got = [ex["text"] for ex in ds.as_numpy_iterator()]
  for text, ids in zip(LINES, got):
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert ids.tolist() == reference_ids(name, tok, text)
  decoded = tf.data.Dataset.from_tensor_slices(
      tf.ragged.constant([g.tolist() for g in got], dtype=tf.int32)).map(vocab.decode_tf)
  expected = [tok.decode(tok.encode(t, add_special_tokens=False).ids) for t in LINES]
  assert [d.decode() for d in decoded.as_numpy_iterator()] == expected


def test_batched_and_nested_string_tensors_give_ragged_ids(case):
  name, vocab, tok = case
  texts = [["Crème brûlée", "東京 🤖"], ["!", ""]]
  ragged = vocab.encode_tf(tf.constant(texts))
  assert isinstance(ragged, tf.RaggedTensor) and ragged.shape[:2] == [2, 2]
  assert ragged.to_list() == [[reference_ids(name, tok, t) for t in row] for row in texts]
  flat = vocab.encode_tf(tf.constant(texts[0]))
  assert flat.to_list() == [reference_ids(name, tok, t) for t in texts[0]]
  padded = flat.to_tensor()  # 2-D dense ids padded with 0: decode_tf gives one string per row
  assert [t.decode() for t in vocab.decode_tf(padded).numpy()] == texts[0]


def test_eos_pad_and_bos_conventions_survive_seqio_packing(case):
  """EOS is the tokenizer's, appended by seqio; 0 is padding and the decoder's first input.

  A text ending in "!" (the tokenizer's id 0 in byte-level BPEs) would lose tokens when packed if
  its id stayed 0: seqio counts an example's length as its non-zero ids.
  """
  name, vocab, tok = case
  eos_text = json.load(open(os.path.join(os.path.dirname(vocab.files.tokenizer_path),
                                         "tokenizer_config.json")))["eos_token"]
  assert vocab.eos_id == tok.token_to_id(eos_text)  # no fixture's EOS is id 0 or the BOS
  assert vocab.pad_id == 0 and vocab.bos_id == 0
  texts = ["Wow!", "Numbers 1, 2, 3!", "東京!"]
  features = {"targets": seqio.Feature(vocab, add_eos=True)}
  ds = tf.data.Dataset.from_tensor_slices({"targets": texts})
  ds = seqio.preprocessors.append_eos_after_trim(
      seqio.preprocessors.tokenize(ds, features), sequence_length={"targets": 64},
      output_features=features)
  converter = seqio.DecoderFeatureConverter(pack=True)
  packed = next(converter(ds, {"targets": 64}).as_numpy_iterator())
  expected = sum((reference_ids(name, tok, t) + [vocab.eos_id] for t in texts), [])
  n = len(expected)
  assert packed["decoder_target_tokens"][:n].tolist() == expected
  assert not packed["decoder_target_tokens"][n:].any()
  assert packed["decoder_loss_weights"][:n].all() and not packed["decoder_loss_weights"][n:].any()
  starts = [0] + list(np.cumsum([len(reference_ids(name, tok, t)) + 1 for t in texts])[:-1])
  assert packed["decoder_input_tokens"][starts].tolist() == [0, 0, 0]
  assert vocab.decode(packed["decoder_target_tokens"].tolist()) == texts[0]  # up to the 1st EOS


def test_bos_text_is_dropped_and_its_role_played_by_the_leading_zero(dirs):
  vocab = hf_tokenizer.HfVocabulary(dirs["llama3"])
  tok = vocab.tokenizer
  bos = tok.token_to_id("<|begin_of_text|>")
  assert vocab.encode("<|begin_of_text|>Hi!") == vocab.encode("Hi!")
  assert vocab.layout.swap == (0, bos) and vocab.encode("!") == [bos]
  # The tokenizer's post-processor prepends BOS; the vocabulary never adds it.
  assert tok.encode("Hi").ids[0] == bos and bos not in vocab.encode("Hi")


def _declares_bos_it_never_adds(src: str, dst) -> str:
  """A copy of the Qwen-like tokenizer whose config names `<|im_start|>` as its bos_token while
  its post-processor adds nothing: how SmolLM2's tokenizer is."""
  shutil.copytree(src, dst)
  config_path = os.path.join(dst, "tokenizer_config.json")
  config = json.load(open(config_path))
  config["bos_token"] = "<|im_start|>"
  json.dump(config, open(config_path, "w"))
  return str(dst)


def test_a_declared_bos_the_tokenizer_never_adds_is_ordinary_text(dirs, tmp_path):
  """Rows start with what the tokenizer adds, not with the bos_token it names: chat markers keep
  every id `tokenizers` gives them, and the start slot is hidden (the model never saw a BOS)."""
  path = _declares_bos_it_never_adds(dirs["qwen"], tmp_path / "smol")
  policy = policy_for("qwen", dirs)
  vocab = hf_tokenizer.HfVocabulary(path, policy)
  tok = vocab.tokenizer
  chat = "<|im_start|>user\nWhat is 17 + 25?<|im_end|>\n<|im_start|>assistant\n"
  expected = tok.encode(chat, add_special_tokens=False).ids
  to_model = vocab.layout.tokenizer_to_model()
  assert vocab.encode(chat) == [int(to_model[i]) for i in expected]
  assert len(vocab.encode(chat)) == len(expected) and tok.token_to_id("<|im_start|>") in expected
  assert vocabularies.adds_start_token(vocab) is False
  # seqio's decode stops at the first EOS (<|im_end|> here): the opener survives the round trip.
  assert vocab.decode(vocab.encode(chat)) == "<|im_start|>user\nWhat is 17 + 25?"
  # The older rule put the declared bos_token in the start slot and dropped it from text.
  legacy = hf_tokenizer.HfVocabulary(path, policy, "declared")
  assert len(legacy.encode(chat)) == len(expected) - 2 and legacy.adds_start_token


def test_a_bos_the_post_processor_adds_fills_the_start_slot(dirs):
  vocab = hf_tokenizer.HfVocabulary(dirs["llama3"])
  assert vocab.files.added_start_token() == vocab.tokenizer.encode("Hi").ids[0]
  assert vocabularies.adds_start_token(vocab) is True


def test_truncation_and_padding_saved_in_tokenizer_json_do_not_cut_text(dirs, tmp_path):
  tok = Tokenizer.from_file(os.path.join(dirs["qwen"], "tokenizer.json"))
  tok.enable_truncation(max_length=4)
  tok.enable_padding(length=64)
  shutil.copytree(dirs["qwen"], tmp_path / "q")
  tok.save(str(tmp_path / "q" / "tokenizer.json"))
  vocab = hf_tokenizer.HfVocabulary(str(tmp_path / "q"), policy_for("qwen", dirs))
  assert vocab.decode(vocab.encode(hf_fixtures.SAMPLE_TEXT)) == hf_fixtures.SAMPLE_TEXT


# ------------------------------------------------------------------------------------------------
# get_vocabulary / run.json / the configured vocabulary.

def test_get_vocabulary_hf_builds_from_gin_and_from_its_run_json_spec(dirs):
  bindings = {"get_vocabulary.kind": "hf", "get_vocabulary.path": dirs["llama3"],
              "get_vocabulary.num_sentinels": 40}
  try:
    with gin.unlock_config():
      for key, value in bindings.items():
        gin.bind_parameter(key, value)
    configured = vocabularies.configured()
    assert isinstance(configured.resolved, hf_tokenizer.HfVocabulary)
    assert len(vocabularies.sentinel_ids(configured)) == 40
    assert configured.encode("Hi!") == configured.resolved.encode("Hi!")
    spec = json.loads(json.dumps(dataclasses.asdict(vocabularies.configured_spec())))
    assert vocabularies.VocabularySpec(**spec).build() == configured.resolved
  finally:
    with gin.unlock_config():
      gin.bind_parameter("get_vocabulary.kind", "demo")
      gin.bind_parameter("get_vocabulary.path", None)
      gin.bind_parameter("get_vocabulary.num_sentinels",
                         vocabularies.DEFAULT_NUM_SENTINELS_WITHOUT_EXTRA_IDS)
  assert isinstance(vocabularies.configured().resolved, seqio.SentencePieceVocabulary)


# ------------------------------------------------------------------------------------------------
# Bad input: clear errors naming the file and what to fix.

def test_missing_tokenizer_names_the_path_and_the_fix(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"no Hugging Face tokenizer at .*tokenizer\.json.*"
                     r"get_vocabulary\.path"):
    vocabularies.VocabularySpec(kind="hf", path=str(tmp_path)).build()
  (tmp_path / "tokenizer.model").write_bytes(b"")
  with pytest.raises(FileNotFoundError, match="kind='sentencepiece'"):
    hf_tokenizer.HfVocabulary(str(tmp_path))
  with pytest.raises(ValueError, match="needs get_vocabulary.path"):
    vocabularies.VocabularySpec(kind="hf").build()


def test_unknown_eos_names_tokenizer_config(dirs, tmp_path):
  shutil.copy(os.path.join(dirs["llama3"], "tokenizer.json"), tmp_path / "tokenizer.json")
  with pytest.raises(ValueError, match=r"tokenizer_config\.json is missing.*eos_token"):
    hf_tokenizer.HfVocabulary(str(tmp_path))
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|nope|>"}))
  with pytest.raises(ValueError, match=r"tokenizer_config\.json: eos_token '<\|nope\|>' is not a "
                                       r"token"):
    hf_tokenizer.HfVocabulary(str(tmp_path))


def test_too_few_free_ids_for_the_sentinels_names_the_file_and_the_fix(dirs):
  with pytest.raises(ValueError, match=r"llama3/tokenizer\.json: 200 free ids are needed \(200 "
                     r"sentinels\) but 110 tokens match reserved_pattern.*num_sentinels.*new_rows"):
    hf_tokenizer.HfVocabulary(dirs["llama3"], token_layout.SentinelPolicy(num_sentinels=200))
  rows = hf_fixtures.qwen_embedding_size(dirs["qwen"])
  with pytest.raises(ValueError, match=r"qwen/tokenizer\.json: 401 free ids are needed \(400 "
                     r"sentinels \+ 1 row for token 0\).*embedding_size"):
    hf_tokenizer.HfVocabulary(dirs["qwen"], token_layout.SentinelPolicy(
        "unused_rows", num_sentinels=400, embedding_size=rows))
  with pytest.raises(ValueError, match="needs embedding_size"):
    hf_tokenizer.HfVocabulary(dirs["qwen"], token_layout.SentinelPolicy("unused_rows"))
  with pytest.raises(ValueError, match="no BOS distinct from EOS.*'last_k' takes real tokens"):
    hf_tokenizer.HfVocabulary(dirs["qwen"], token_layout.SentinelPolicy("last_k"))
  with pytest.raises(ValueError, match="unknown sentinel policy"):
    vocabularies.VocabularySpec(kind="hf", path=dirs["qwen"], sentinels="lastk").build()
