"""The README's bring-your-own-model command (gin_configs/pipelines/hf.gin) end to end, on the real
SmolLM2-135M-Instruct: import -> UL2R on a JSONL corpus without a `{split}` -> Flan on an export
file without validation rows (from UL2R and from the base) -> evaluation on BBH (in the model's
chat template) and held-out-text infilling -> a Hugging Face export of every stage.

The model is the real one cut to its first two layers (`real_model.first_layers`): its tokenizer,
special tokens, chat template, generation config, embeddings and layer weights are SmolLM2's, so
every convention the recipe must keep (no BOS: its tokenizer adds none; the chat template; the
exports' files) is the real model's, at a training cost 2 CPU cores can pay in a test. The full
30 layers are checked against transformers in tests/test_real_model.py, and the same command on
them is timed in docs/hf.md.
"""

import itertools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
import tokenizers
import torch
import transformers

import hf_reference
import real_model
from helpers import copy_bbh_subtasks, run_cli
from ul2flan import checkpoints, config as config_lib, partitioning
from ul2flan.commands import main as cli
from ul2flan.model import decoder as decoder_lib

LAYERS = 2
# The pipeline's documented rule (ul2flan/holdout.py): a document whose FarmHash fingerprint is 0
# modulo 100 is held out of train as the validation split.
HOLDOUT_EVERY = 100
TEXT_ROW = 128  # held-out text rows; every held-out document below fits in one
TEXT_BATCHES = 4
STAGES = ("ul2r", "flan_ul2r", "flan_base")


def corpus_documents() -> list[str]:
  """Real English: every three sentences of ENGLISH_TEXT, in order (364 documents)."""
  sentences = [s.strip() for s in real_model.ENGLISH_TEXT.replace("\n\n", " ").split(". ")]
  sentences = [s if s.endswith(".") else s + "." for s in sentences if s]
  return [" ".join(c) for c in itertools.combinations(sentences, 3)]


def flan_rows() -> list[dict]:
  """An instruction export as the Flan collection writes it, train rows only (408)."""
  rows = []
  questions = ("What is {a} plus {b}? Answer with a number.", "Add {a} and {b}.")
  for i, (q, a, b) in enumerate(itertools.product(questions, range(2, 14), range(3, 20))):
    name, source = ("arithmetic_sum", "Flan2021") if i % 2 else ("task085_unnatural_addsub", "NIv2")
    rows.append({"inputs": q.format(a=a, b=b), "targets": str(a + b), "_task_name": name,
                 "_task_source": source, "_template_type": "zs_noopt"})
  return rows


def write_jsonl(path, rows) -> str:
  with open(path, "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
  return str(path)


def held_out(texts: list[str]) -> list[str]:
  buckets = tf.strings.to_hash_bucket_fast(texts, HOLDOUT_EVERY).numpy()
  return [t for t, b in zip(texts, buckets) if b == 0]


def transformers_nll(model, raw_tokenizer, documents: list[str], eos_id: int) -> float:
  """Mean NLL per predicted token of `documents`, each run alone as transformers runs text: the
  tokenizer's ids (no BOS: SmolLM2's tokenizer adds none) then EOS, in float64 from the logits;
  the first token has no context and is not predicted."""
  total, count = 0.0, 0
  for doc in documents:
    ids = raw_tokenizer.encode(doc, add_special_tokens=False).ids + [eos_id]
    with torch.no_grad():
      logits = model(torch.as_tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits[:-1], -1)
    total -= float(logp[torch.arange(len(ids) - 1), torch.as_tensor(ids[1:])].sum())
    count += len(ids) - 1
  return total / count


def pipeline_args(run, hf_dir, corpus, flan, benchmarks) -> list[str]:
  # Test size: 2 steps a stage, short rows, one BBH subtask, 1 item, direct answers, 4 infilling
  # examples, float32 exports (compared below). The rest is hf.gin's, as the README runs it.
  small = ["TRAIN_STEPS = 2", "BATCH_SIZE = 2", "EVAL_PERIOD = 2", "EvalConfig.steps = 2",
           "CheckpointConfig.save_period = 2", "TrainConfig.peak_flops_per_device = 1e12",
           f"EvalConfig.text_steps = {TEXT_BATCHES}",
           f"text/DatasetConfig.task_feature_lengths = {{'targets': {TEXT_ROW}}}"]
  ul2r = small + ["TASK_FEATURE_LENGTHS = {'inputs': 64, 'targets': 64}"]
  flan_stage = small + ["TASK_FEATURE_LENGTHS = {'inputs': 48, 'targets': 16}"]
  return ["pipeline", "--gin_file=gin_configs/pipelines/hf.gin", f"--model_dir={run}",
          f"--gin.HF_MODEL='{hf_dir}'", f"--gin.UL2R_CORPUS='jsonl:{corpus}'",
          f"--gin.FLAN_DATA='{flan}'", f"--gin.BENCHMARKS_DATA='{benchmarks}'",
          f"--gin.run_pipeline.ul2r_bindings={ul2r!r}",
          f"--gin.run_pipeline.flan_bindings={flan_stage!r}",
          "--gin.evaluation_settings.benchmark_max_examples=1",
          "--gin.evaluation_settings.benchmark_modes='direct'",
          "--gin.evaluation_settings.text_infilling_examples=4",
          "--gin.evaluation_settings.batch_size=4", "--gin.hf_export_settings.dtype='float32'"]


@pytest.mark.slow
def test_hf_pipeline_on_the_real_model(smollm2_hf_dir, tmp_path):
  hf_dir = real_model.first_layers(smollm2_hf_dir, str(tmp_path / "smollm2"), LAYERS)
  documents = corpus_documents()
  corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"text": d} for d in documents])
  rows = flan_rows()
  flan = write_jsonl(tmp_path / "flan_export.jsonl", rows)
  benchmarks = copy_bbh_subtasks(str(tmp_path / "eval"), ["boolean_expressions"])
  raw_tokenizer = tokenizers.Tokenizer.from_file(os.path.join(hf_dir, "tokenizer.json"))
  assert raw_tokenizer.encode("x").ids == raw_tokenizer.encode("x", add_special_tokens=False).ids
  validation = held_out(documents)
  assert held_out([f"{r['inputs']}\n{r['targets']}" for r in rows])  # Flan validation rows too
  assert validation and max(len(raw_tokenizer.encode(d).ids) + 1 for d in validation) <= TEXT_ROW

  # A process of its own, as a user runs it: one CPU device, XLA's usual optimisation.
  run = tmp_path / "run"
  args = pipeline_args(run, hf_dir, corpus, flan, benchmarks)
  result = run_cli(args, env_extra={"XLA_FLAGS": ""}, timeout=900)
  assert result.returncode == 0, result.stderr[-4000:]
  assert "has no validation split: 1 document in ~100 is held out" in result.stderr

  assert json.loads((run / "base" / "run.json").read_text())["vocabulary"]["kind"] == "hf"
  for stage, converter in zip(STAGES, ("prefix_lm", "prefix_lm", "prefix_lm_causal")):
    info = config_lib.read_run_info(str(run / stage))
    assert info.feature_converter == converter and info.vocabulary["kind"] == "hf"
    assert (run / stage / "DONE").exists() and (run / stage / "hf" / "config.json").exists()
    eval_rows = [json.loads(line) for line in
                 (run / stage / "metrics_eval.jsonl").read_text().splitlines()]
    assert any(r.get("tokens", 0) > 0 for r in eval_rows)  # the held-out slices were scored
  assert not (run / "base" / "hf").exists()  # the base was not trained here

  # The report: the four models on the benchmark and on held-out-text infilling.
  report = (run / "report.md").read_text()
  assert "| Flan-U-base |" in report and "## Flan benchmarks" in report
  assert "## Infilling on held-out corpus text" in report
  models = json.loads((run / "report.json").read_text())["models"]
  assert len(models) == 4
  for metrics in models.values():
    assert {"benchmark_bbh_direct", "text_infilling_accuracy"} <= set(metrics)

  # The text the stages start from is read as the model reads it: the held-out text loss of
  # both stages trained from the base is transformers' NLL of the held-out documents.
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
  want = transformers_nll(hf_model, raw_tokenizer, validation,
                          raw_tokenizer.token_to_id(hf_tokenizer.eos_token))
  for stage in ("ul2r", "flan_base"):
    start = json.loads((run / stage / "text_guard.json").read_text())
    assert start["step"] == 0
    np.testing.assert_allclose(start["text_loss"], want, rtol=1e-4, err_msg=stage)

  # Every export keeps the original tokenizer, chat template and generation config.
  chat = [{"role": "user", "content": "What is 2 plus 3?"}]
  for stage in STAGES:
    exported = transformers.AutoTokenizer.from_pretrained(str(run / stage / "hf"))
    assert exported.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == \
        hf_tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert exported(real_model.ENGLISH_TEXT).input_ids == \
        hf_tokenizer(real_model.ENGLISH_TEXT).input_ids
    config = transformers.GenerationConfig.from_pretrained(str(run / stage / "hf"))
    assert config.eos_token_id == hf_model.generation_config.eos_token_id
  # The sentinels UL2R trained are tokens of the export, in new rows after the original's.
  first = exported.convert_tokens_to_ids("<extra_id_0>")
  assert first >= len(hf_tokenizer)
  assert exported("a <extra_id_3> b", add_special_tokens=False).input_ids.count(first + 3) == 1

  # The exported Flan-U model in transformers, as a prefix LM, against the trained checkpoint.
  export = transformers.AutoModelForCausalLM.from_pretrained(str(run / "flan_ul2r" / "hf"),
                                                             dtype=torch.float32).eval()
  info = config_lib.read_run_info(str(run / "flan_ul2r"))
  params, step = checkpoints.restore_params(str(run / "flan_ul2r"), decoder_lib.abstract_params(
      info.decoder_config, partitioning.Partitioner({"data": 1}, devices=jax.devices()[:1])))
  assert step == 2
  to_model = info.build_vocabulary().layout.tokenizer_to_model()
  ids = raw_tokenizer.encode(validation[0]).ids[:80]
  prefix = (np.arange(len(ids)) < 50)[None].astype(np.int32)
  ours = np.asarray(decoder_lib.Decoder(info.decoder_config).apply(
      {"params": params}, jnp.asarray(to_model[ids][None]),
      decoder_causal_attention=jnp.asarray(prefix)))[0]
  with torch.no_grad():
    theirs = export(torch.as_tensor([ids]), attention_mask=hf_reference.prefix_lm_mask(50, len(ids))
                    ).logits[0].numpy()
  np.testing.assert_allclose(theirs[:, :len(to_model)], ours[:, to_model], atol=1e-4, rtol=0)

  # A re-run (here in this process: nothing to compile) converts and trains nothing again: every
  # file the import and the stages wrote is left as it was (same bytes, not rewritten).
  written = [run / "base" / "ul2flan.json", run / "base" / "model.gin"] + [
      run / stage / name for stage in STAGES for name in ("DONE", "metrics.jsonl", "run.json")]
  before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in written}
  checkpoints_before = sorted(str(p.relative_to(run)) for p in run.glob("*/checkpoints/*"))
  assert cli.main(args) == 0
  assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in written} == before
  assert sorted(str(p.relative_to(run)) for p in run.glob("*/checkpoints/*")) == checkpoints_before
