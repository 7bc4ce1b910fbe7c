"""Tiny Hugging Face tokenizers built in-process (no download): shaped like Llama 3, Qwen, Llama 2.

* `llama3_like`: byte-level BPE, then `<|begin_of_text|>` (BOS), `<|end_of_text|>` (EOS), chat
  markers and `<|reserved_special_token_k|>` tokens after the BPE vocabulary, as in Llama 3; a
  Llama-3-style chat template in tokenizer_config.json; a post-processor that prepends BOS.
* `qwen_like`: byte-level BPE, `<|endoftext|>` / `<|im_start|>` / `<|im_end|>`, no BOS, EOS
  `<|im_end|>`, padding `<|endoftext|>`, a ChatML template in chat_template.jinja; its model pads
  the embedding to a multiple of 128 rows (`QWEN_EMBEDDING_SIZE`).
* `sentencepiece_like`: Llama-2-style BPE with `<unk>`=0, `<s>`=1, `</s>`=2 and byte fallback
  (`<0x00>`..`<0xFF>`), `▁` for spaces; no chat template.
"""

from __future__ import annotations

import json
import os

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import trainers

# Accents, CJK, emoji (with ZWJ sequences and a flag), digits and runs of whitespace.
SAMPLE_TEXT = (
    "Crème brûlée in São Paulo — naïve façade, Ærøskøbing, Đà Nẵng.\n"
    "東京は日本の首都です。我爱自然语言处理。한국어 문장도 있습니다.\n"
    "🤖🎉 family: 👩‍👩‍👧 flag: 🇯🇵 ok\n"
    "Digits 3.14159, 2026-11-29, 1,000,000 and 0042!\n"
    "   leading spaces,\ttabs\t\tand   runs     of  spaces  \n\n\nend ")

_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Olga lives in Lyon and works as a baker; she was born in 1987.",
    "Crème brûlée, café au lait, naïve résumé, São Paulo, Zürich, Kraków.",
    "東京は日本の首都です。", "我爱自然语言处理。", "한국어 문장입니다.",
    "Numbers: 12, 345, 6789, 3.14, 2.718 and 1,000,000!",
    "Emoji 🤖 🎉 👍 are fine too.",
    "Question: what is 17 + 25? Answer: 42.",
    "    indented code\tand tabs\n", "Das Wetter ist schön, aber kühl.",
)


def corpus(lines: int = 300) -> list[str]:
  return [f"{_SENTENCES[i % len(_SENTENCES)]} {i} {_SENTENCES[(7 * i) % len(_SENTENCES)]}"
          for i in range(lines)]


def _byte_level_bpe(vocab_size: int) -> Tokenizer:
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(corpus(), trainers.BpeTrainer(
      vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False))
  return tok


def _write(directory: str, tok: Tokenizer, config: dict, chat_template_file: str | None = None
           ) -> str:
  os.makedirs(directory, exist_ok=True)
  tok.save(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, ensure_ascii=False, indent=1)
  if chat_template_file is not None:
    with open(os.path.join(directory, "chat_template.jinja"), "w", encoding="utf-8") as f:
      f.write(chat_template_file)
  return directory


LLAMA3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}")
LLAMA3_NUM_RESERVED = 110


def llama3_like(directory: str) -> str:
  tok = _byte_level_bpe(700)
  specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
              "<|reserved_special_token_1|>", "<|start_header_id|>", "<|end_header_id|>",
              "<|reserved_special_token_2|>", "<|eot_id|>"]
  specials += [f"<|reserved_special_token_{k}|>" for k in range(3, LLAMA3_NUM_RESERVED)]
  tok.add_special_tokens(specials)
  tok.post_processor = processors.TemplateProcessing(
      single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
      special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])
  return _write(directory, tok, {
      "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
      "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 8192,
      "chat_template": LLAMA3_CHAT_TEMPLATE})


QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def qwen_like(directory: str) -> str:
  tok = _byte_level_bpe(600)
  tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
  return _write(directory, tok, {
      "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
      "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 32768},
      chat_template_file=QWEN_CHAT_TEMPLATE)


def qwen_embedding_size(directory: str) -> int:
  size = Tokenizer.from_file(os.path.join(directory, "tokenizer.json")).get_vocab_size()
  return -(-(size + 200) // 128) * 128  # at least 200 unused rows, a multiple of 128


def sentencepiece_like(directory: str) -> str:
  byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
  tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
  tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                         normalizers.Replace(" ", "▁")])
  tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                   decoders.Fuse(), decoders.Strip(" ", 1, 0)])
  tok.train_from_iterator(corpus(), trainers.BpeTrainer(
      vocab_size=700, special_tokens=["<unk>", "<s>", "</s>"] + byte_tokens,
      show_progress=False))
  spec = json.loads(tok.to_str())
  spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] not in byte_tokens]
  spec["model"].update(byte_fallback=True, unk_token="<unk>", fuse_unk=True)
  tok = Tokenizer.from_str(json.dumps(spec))
  tok.post_processor = processors.TemplateProcessing(
      single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
  return _write(directory, tok, {
      "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
      "tokenizer_class": "PreTrainedTokenizerFast"})


def build_all(root: str) -> dict[str, str]:
  return {name: fn(os.path.join(root, name)) for name, fn in
          (("llama3", llama3_like), ("qwen", qwen_like), ("sentencepiece", sentencepiece_like))}
