"""Tokenization throughput of the Hugging Face vocabulary inside a seqio task.

Compared, on the same documents and in the same run (alternating rounds, median of the ratios):

- `tokenizers`: `Tokenizer.encode_batch_fast` over all documents at once (Rust, all cores);
- `seqio+hf`: a seqio task (text source -> `seqio.preprocessors.tokenize` -> EOS) with
  `ul2flan.hf_vocab.vocabulary.HfVocabulary`, read as the trainer reads it (tf.data, batched);
- `seqio+spm`: the same task with the demo SentencePiece vocabulary (seqio's in-graph op), for
  context.

Target: seqio+hf >= 0.5x tokenizers. Tokens/s are also compared with what the trainer consumes
(`--trainer_tokens_per_second`, default the README's tiny-model CPU figure).

The tokenizer is a byte-level BPE trained here on the demo corpus (Llama-3-like: reserved special
tokens after the BPE vocabulary) unless `--tokenizer DIR` names a real one (e.g. a local Llama 3 or
Qwen directory). Documents are the demo corpus's, joined to about `--doc_chars` characters.

  python benchmarks/hf_tokenize.py [--doc_chars 2000] [--tokenizer DIR] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import seqio
import tensorflow as tf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ul2flan import vocabularies
from ul2flan.demo import world
from ul2flan.hf_vocab import token_layout
from ul2flan.hf_vocab import vocabulary as hf_tokenizer


def build_tokenizer(directory: str, vocab_size: int) -> str:
  """A Llama-3-like byte-level BPE trained on the demo corpus, saved with its config."""
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(world.corpus_documents("train"), trainers.BpeTrainer(
      vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False))
  tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>"] +
                         [f"<|reserved_special_token_{k}|>" for k in range(248)])
  tok.save(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump({"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}, f)
  return directory


def documents(doc_chars: int, limit: int) -> list[str]:
  docs, current = [], ""
  for text in world.corpus_documents("train"):
    current = f"{current} {text}" if current else text
    if len(current) >= doc_chars:
      docs.append(current)
      current = ""
      if len(docs) == limit:
        break
  return docs


def text_task(name: str, texts: list[str], vocabulary: seqio.Vocabulary) -> seqio.Task:
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  source = seqio.FunctionDataSource(
      lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices({"text": texts}),
      splits=["train"])
  return seqio.TaskRegistry.add(
      name, source=source, output_features={"targets": seqio.Feature(vocabulary, add_eos=True)},
      preprocessors=[lambda ds: ds.map(lambda ex: {"targets": ex["text"]}),
                     seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      metric_fns=[])


def seqio_tokens_per_second(task: seqio.Task) -> float:
  ds = task.get_dataset(None, split="train", shuffle=False)
  sizes = ds.map(lambda ex: tf.size(ex["targets"]), num_parallel_calls=tf.data.AUTOTUNE)
  sizes = sizes.batch(1024).map(tf.reduce_sum).prefetch(2)
  start = time.perf_counter()
  tokens = sum(int(n) for n in sizes.as_numpy_iterator())
  return tokens / (time.perf_counter() - start)


def tokenizers_tokens_per_second(tok: Tokenizer, texts: list[str]) -> float:
  start = time.perf_counter()
  encodings = tok.encode_batch_fast(texts, add_special_tokens=False)
  elapsed = time.perf_counter() - start
  return (sum(len(e.ids) for e in encodings) + len(texts)) / elapsed  # + EOS, as seqio counts


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--tokenizer", default=None, help="a directory with tokenizer.json")
  parser.add_argument("--vocab_size", type=int, default=16000, help="of the trained tokenizer")
  parser.add_argument("--doc_chars", type=int, default=2000)
  parser.add_argument("--num_docs", type=int, default=4000)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--trainer_tokens_per_second", type=float, default=5400.0,
                      help="what the trainer consumes (default: tiny model on 2 CPU cores)")
  args = parser.parse_args(argv)

  with tempfile.TemporaryDirectory() as tmp:
    path = args.tokenizer or build_tokenizer(tmp, args.vocab_size)
    vocab = hf_tokenizer.HfVocabulary(path, token_layout.SentinelPolicy("new_rows"))
    texts = documents(args.doc_chars, args.num_docs)
    chars = sum(map(len, texts)) / len(texts)
    print(f"tokenizer {path if args.tokenizer else f'trained here, {args.vocab_size} BPE'}; "
          f"{len(texts)} documents of {chars:.0f} characters; {os.cpu_count()} CPUs")
    hf_task = text_task("bench_hf_tokenize", texts, vocab)
    spm_task = text_task("bench_spm_tokenize", texts, vocabularies.demo_vocabulary())
    seqio_tokens_per_second(hf_task)  # warm-up: tracing, tokenizer caches
    rows = []
    for _ in range(args.rounds):
      rows.append((tokenizers_tokens_per_second(vocab.tokenizer, texts),
                   seqio_tokens_per_second(hf_task), seqio_tokens_per_second(spm_task)))
      print("tokens/s: tokenizers {:>10.0f}  seqio+hf {:>10.0f}  seqio+spm {:>10.0f}".format(
          *rows[-1]))
  ratio = statistics.median(hf / base for base, hf, _ in rows)
  hf_rate = statistics.median(hf for _, hf, _ in rows)
  print(f"seqio+hf / tokenizers: {ratio:.2f}x (median of {args.rounds} rounds; target >= 0.5x)")
  print(f"seqio+hf tokens/s / trainer tokens/s ({args.trainer_tokens_per_second:g}): "
        f"{hf_rate / args.trainer_tokens_per_second:.1f}x")
  return 0


if __name__ == "__main__":
  tf.get_logger().setLevel("ERROR")
  raise SystemExit(main())
