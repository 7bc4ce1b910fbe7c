"""Chat templates: ul2flan's rendering vs transformers' `apply_chat_template`, and the Flan switch.

transformers (test-only dependency) loads the same tokenizer files from disk; library code never
imports it.
"""

import itertools

import gin
import pytest
import seqio
import transformers

import hf_fixtures
from ul2flan.flan import chat
from ul2flan.flan import sources
from ul2flan.hf_vocab import chat_template
from ul2flan.hf_vocab import token_layout
from ul2flan.hf_vocab import vocabulary as hf_tokenizer

CONTENTS = ["What is 2+2?", "  padded question with   runs of spaces \n", hf_fixtures.SAMPLE_TEXT,
            "Emoji 🤖 and CJK 東京 and a brace {{ not jinja }}"]
ROWS = [{"inputs": "What is the capital of France?", "targets": "Paris"},
        {"inputs": hf_fixtures.SAMPLE_TEXT, "targets": "Crème brûlée 🤖 42!"}]
_names = itertools.count()


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  return hf_fixtures.build_all(str(tmp_path_factory.mktemp("hf_chat")))


def policy(name, dirs):
  if name == "qwen":
    return token_layout.SentinelPolicy(
        "unused_rows", embedding_size=hf_fixtures.qwen_embedding_size(dirs["qwen"]))
  return token_layout.SentinelPolicy()


@pytest.fixture(scope="module", params=["llama3", "qwen"])
def case(request, dirs):
  name = request.param
  return (name, hf_tokenizer.HfVocabulary(dirs[name], policy(name, dirs)),
          transformers.AutoTokenizer.from_pretrained(dirs[name], local_files_only=True))


def hf_chat_ids(reference, messages, **kwargs):
  return list(reference.apply_chat_template(messages, tokenize=True, **kwargs)["input_ids"])


@pytest.mark.parametrize("system", [None, "You are terse."])
def test_rendering_matches_transformers(case, system):
  _, vocab, reference = case
  head = [{"role": "system", "content": system}] if system else []
  for content in CONTENTS:
    user = head + [{"role": "user", "content": content}]
    full = user + [{"role": "assistant", "content": content[::-1]}]
    prompt, reply = vocab.chat_template.exchange(content, content[::-1], system)
    assert prompt == reference.apply_chat_template(user, add_generation_prompt=True,
                                                   tokenize=False)
    assert prompt + reply == reference.apply_chat_template(full, tokenize=False)


def flan_task(vocab):
  name = f"hf_chat_flan_{next(_names)}"
  sources.register_preformatted_task(name, lambda split: ROWS, ["train"], vocabulary=vocab)
  return seqio.get_mixture_or_task(name)


class chat_switch:  # pylint: disable=invalid-name
  """`ChatFormat.enabled = value` (gin) for the duration of a with-block."""

  def __init__(self, value=True):
    self.value = value

  def __enter__(self):
    with gin.unlock_config():
      gin.bind_parameter("ChatFormat.enabled", self.value)

  def __exit__(self, *exc):
    with gin.unlock_config():
      gin.bind_parameter("ChatFormat.enabled", False)


def test_flan_examples_in_the_chat_template_match_transformers_ids_with_loss_on_targets(case):
  name, vocab, reference = case
  task = flan_task(vocab)
  lengths = {"inputs": 512, "targets": 64}
  with chat_switch():
    examples = list(task.get_dataset(lengths, shuffle=False).as_numpy_iterator())
    converted = list(seqio.PrefixLMFeatureConverter(pack=False)(
        task.get_dataset(lengths, shuffle=False), lengths).as_numpy_iterator())
  to_tokenizer = vocab.layout.model_to_tokenizer()
  bos = reference.bos_token_id
  eos = reference.convert_tokens_to_ids(reference.eos_token)
  for row, ex, model_ex in zip(ROWS, examples, converted):
    user = [{"role": "user", "content": row["inputs"]}]
    prompt = hf_chat_ids(reference, user, add_generation_prompt=True)
    full = hf_chat_ids(reference, user + [{"role": "assistant", "content": row["targets"]}])
    inputs, targets = ex["inputs"].tolist(), ex["targets"].tolist()
    assert inputs[-1] == targets[-1] == vocab.eos_id  # every feature ends with EOS
    # The decoder sees 0 first; its row is the BOS row (Llama-like) or a copy of EOS (Qwen-like).
    seen_prompt = ([bos] if name == "llama3" else []) + to_tokenizer[inputs[:-1]].tolist()
    assert seen_prompt == prompt
    reply = full[len(prompt):]
    if name == "qwen":  # the reply's end of turn is the EOS: the appended EOS stands for it
      reply = reply[:reply.index(eos) + 1]
    else:
      reply = reply + [eos]
    assert to_tokenizer[targets].tolist() == reply
    # Loss on the reply only.
    weights = model_ex["decoder_loss_weights"]
    n_in, n_out = len(inputs), len(targets)
    assert not weights[:n_in].any() and weights[n_in:n_in + n_out].all()
    assert weights.sum() == n_out
    assert chat.chat_prompt(vocab, row["inputs"], chat.ChatFormat(enabled=True)) == (
        reference.apply_chat_template(user, add_generation_prompt=True, tokenize=False))


def test_switch_is_off_by_default(case):
  _, vocab, _ = case
  ex = next(flan_task(vocab).get_dataset({"inputs": 512, "targets": 64},
                                         shuffle=False).as_numpy_iterator())
  assert ex["inputs"].tolist() == vocab.encode(ROWS[0]["inputs"]) + [vocab.eos_id]
  assert ex["targets"].tolist() == vocab.encode(ROWS[0]["targets"]) + [vocab.eos_id]
  assert chat.chat_prompt(vocab, "hi") == "hi"


def test_auto_is_the_template_where_the_tokenizer_has_one_and_plain_rows_where_not(case, dirs):
  name, vocab, reference = case
  plain_vocab = hf_tokenizer.HfVocabulary(dirs["sentencepiece"],
                                          token_layout.SentinelPolicy("new_rows"))
  lengths = {"inputs": 512, "targets": 64}
  with chat_switch("auto"):
    templated = next(flan_task(vocab).get_dataset(lengths, shuffle=False).as_numpy_iterator())
    plain = next(flan_task(plain_vocab).get_dataset(lengths, shuffle=False).as_numpy_iterator())
  user = [{"role": "user", "content": ROWS[0]["inputs"]}]
  seen_prompt = (([reference.bos_token_id] if name == "llama3" else [])
                 + vocab.layout.model_to_tokenizer()[templated["inputs"][:-1]].tolist())
  assert seen_prompt == hf_chat_ids(reference, user, add_generation_prompt=True)
  assert plain["inputs"].tolist() == plain_vocab.encode(ROWS[0]["inputs"]) + [plain_vocab.eos_id]
  assert chat.ChatFormat(enabled="auto").active(vocab)
  assert not chat.ChatFormat(enabled="auto").active(plain_vocab)
  with pytest.raises(ValueError, match=r"use True, False or \"auto\""):
    chat.ChatFormat(enabled="yes")


def test_switch_without_a_chat_template_names_the_tokenizer_and_the_fix(dirs):
  vocab = hf_tokenizer.HfVocabulary(dirs["sentencepiece"], token_layout.SentinelPolicy("new_rows"))
  task = flan_task(vocab)
  with chat_switch(), pytest.raises(ValueError, match=r"sentencepiece/tokenizer\.json\) has no "
                                                      r"chat template.*chat_template"):
    task.get_dataset({"inputs": 64, "targets": 64}, shuffle=False)


def test_a_template_that_is_not_prompt_plus_reply_is_refused():
  odd = chat_template.ChatTemplate(
      "{% for m in messages %}{{ m['content'] }}{% endfor %}"
      "{% if add_generation_prompt %}<gen>{% endif %}", {}, "odd.json")
  with pytest.raises(chat_template.ChatTemplateError, match="odd.json: .*generation prompt"):
    odd.exchange("q", "a")
  with pytest.raises(chat_template.ChatTemplateError, match="bad.json: the chat template does "
                                                            "not parse"):
    chat_template.ChatTemplate("{% for %}", {}, "bad.json")
  assert chat_template.select_template(
      [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "y"}], "c") == "y"


def test_flan_demo_is_unchanged_when_off():
  """A demo Flan task's ids are its raw rows' text tokenized, nothing wrapped around them."""
  import ul2flan_tasks  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  task = seqio.get_mixture_or_task("demo_flan_fact_qa")
  raw = task.source.get_dataset(split="train", shuffle=False).take(3)
  ds = task.get_dataset({"inputs": 512, "targets": 64}, shuffle=False).take(3)
  vocab = task.output_features["inputs"].vocabulary
  for row, ex in zip(raw.as_numpy_iterator(), ds.as_numpy_iterator()):
    assert ex["inputs"].tolist() == vocab.encode(row["inputs"].decode()) + [vocab.eos_id]
    assert ex["targets"].tolist() == vocab.encode(row["targets"].decode()) + [vocab.eos_id]
