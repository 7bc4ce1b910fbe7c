"""The bring-your-own-model pipeline end to end (gin_configs/pipelines/hf.gin): a tiny random
Llama saved with transformers beside a tokenizer trained here -> import -> UL2R on a JSONL corpus
-> Flan on an export file (from UL2R and from the base) -> evaluation -> a Hugging Face export of
every stage, the Flan-U one checked in transformers against ul2flan's own checkpoint."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import hf_reference
from helpers import REPO_ROOT, copy_bbh_subtasks
from ul2flan import checkpoints, config as config_lib, partitioning
from ul2flan.commands import main as cli
from ul2flan.model import decoder as decoder_lib

WORDS = ["Alice", "Bob", "lives", "in", "Paris", "Lyon", "the", "cat", "sat", "on", "a", "mat",
         "works", "as", "baker", "teacher", "and", "is", "from"]


def write_corpus(path, n=200):
  rng = np.random.RandomState(1)
  with open(path, "w") as f:
    for _ in range(n):
      f.write(json.dumps({"text": " ".join(rng.choice(WORDS, 40)) + "."}) + "\n")


def write_flan_export(path, n=400):
  with open(path, "w") as f:
    for i in range(n):
      name, source = (("glue/sst2:1.0.0", "Flan2021") if i % 2 else ("task001_quoref", "NIv2"))
      f.write(json.dumps({"inputs": f"Where does {WORDS[i % 4]} live? ({i})", "targets": "in Paris",
                          "_task_name": name, "_task_source": source,
                          "_template_type": "zs_opt"}) + "\n")


def run_pipeline(model_dir, hf_dir, corpus, flan, benchmarks, in_process=False):
  # EVAL_PERIOD = 3: the validation and held-out text passes run on the slices held out of the
  # train-only corpus and Flan export (neither has a validation file).
  small = ["TRAIN_STEPS = 3", "BATCH_SIZE = 4", "EVAL_PERIOD = 3",
           "CheckpointConfig.save_period = 3", "TrainConfig.peak_flops_per_device = 1e12",
           "text/DatasetConfig.task_feature_lengths = {'targets': 64}"]
  ul2r = small + ["TASK_FEATURE_LENGTHS = {'inputs': 64, 'targets': 64}"]
  flan_ = small + ["TASK_FEATURE_LENGTHS = {'inputs': 48, 'targets': 16}"]
  args = [
      "--gin_file=gin_configs/pipelines/hf.gin", f"--model_dir={model_dir}",
      f"--gin.HF_MODEL='{hf_dir}'", f"--gin.UL2R_CORPUS='jsonl:{corpus}'",
      f"--gin.FLAN_DATA='{flan}'",
      f"--gin.run_pipeline.ul2r_bindings={ul2r!r}", f"--gin.run_pipeline.flan_bindings={flan_!r}",
      f"--gin.BENCHMARKS_DATA='{benchmarks}'", "--gin.evaluation_settings.benchmarks=['bbh']",
      "--gin.evaluation_settings.benchmark_modes='direct'",
      "--gin.evaluation_settings.benchmark_max_examples=1",
      "--gin.evaluation_settings.text_infilling_examples=4",
      "--gin.evaluation_settings.batch_size=8", "--gin.hf_export_settings.dtype='float32'"]
  if in_process:
    assert cli.main(["pipeline", *args]) == 0
    return None
  r = subprocess.run([sys.executable, "-m", "ul2flan", "pipeline", *args], cwd=REPO_ROOT,
                     capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-4000:]
  return r.stderr


@pytest.mark.slow
def test_hf_pipeline_end_to_end(tmp_path):
  import transformers
  tokenizer = hf_reference.train_tokenizer(300)
  model = hf_reference.build_model("llama", seed=5, num_hidden_layers=2)
  hf_dir = hf_reference.save_model(model, str(tmp_path / "hf_llama"), tokenizer=tokenizer)
  corpus, flan = str(tmp_path / "corpus.jsonl"), str(tmp_path / "flan.jsonl")
  write_corpus(corpus)
  write_flan_export(flan)
  d = tmp_path / "run"
  # One BBH subtask (all 27 would cost minutes here: the tokenizer trained for this test spells
  # their 3-shot prompts in thousands of tokens).
  benchmarks = copy_bbh_subtasks(str(tmp_path / "eval"), ["boolean_expressions"])
  log = run_pipeline(d, hf_dir, corpus, flan, benchmarks)

  assert json.loads((d / "base" / "run.json").read_text())["vocabulary"]["kind"] == "hf"
  for stage, converter in (("ul2r", "prefix_lm"), ("flan_ul2r", "prefix_lm"),
                           ("flan_base", "prefix_lm_causal")):
    info = config_lib.read_run_info(str(d / stage))
    assert info.feature_converter == converter and info.vocabulary["kind"] == "hf"
    assert (d / stage / "hf" / "config.json").exists()
  assert not (d / "base" / "hf").exists()  # the base was not trained here
  report = (d / "report.md").read_text()
  assert "| Flan-U-base |" in report and "## Flan benchmarks" in report
  assert "## Infilling on held-out corpus text" in report
  models = json.loads((d / "report.json").read_text())["models"]
  for metrics in models.values():
    assert {"benchmark_bbh_direct", "text_infilling_accuracy"} <= set(metrics)
  for stage in ("ul2r", "flan_ul2r"):  # validation loss and held-out text loss were measured
    rows = [json.loads(l) for l in (d / stage / "metrics_eval.jsonl").read_text().splitlines()]
    assert any(r.get("tokens", 0) > 0 for r in rows) and any("text_loss" in r for r in rows)
  assert "has no validation split: 1 document in ~100 is held out of train" in log

  # The exported Flan-U model in transformers, as a prefix LM, against the trained checkpoint.
  exported = transformers.AutoModelForCausalLM.from_pretrained(str(d / "flan_ul2r" / "hf"),
                                                               dtype=torch.float32).eval()
  info = config_lib.read_run_info(str(d / "flan_ul2r"))
  cfg = info.decoder_config
  params, step = checkpoints.restore_params(str(d / "flan_ul2r"), decoder_lib.abstract_params(
      cfg, partitioning.Partitioner({"data": 1}, devices=jax.devices()[:1])))
  assert step == 3
  to_model = hf_reference.swap_ids(tokenizer, len(tokenizer))
  ids = np.random.RandomState(0).randint(3, len(tokenizer), (1, 80))
  prefix = (np.arange(80) < 50)[None].astype(np.int32)
  ours = np.asarray(decoder_lib.Decoder(cfg).apply(
      {"params": params}, jnp.asarray(to_model[ids]), decoder_causal_attention=jnp.asarray(prefix)))
  from test_hf_families import prefix_lm_mask
  with torch.no_grad():
    theirs = exported(torch.as_tensor(ids), attention_mask=prefix_lm_mask(50, 80)).logits.numpy()
  np.testing.assert_allclose(theirs[..., :len(tokenizer)], ours[..., to_model], atol=1e-4, rtol=0)
  hf_tok = transformers.AutoTokenizer.from_pretrained(str(d / "flan_ul2r" / "hf"))
  assert hf_tok.convert_tokens_to_ids("<extra_id_0>") == 300  # the first unused row

  # A re-run (here in this process: nothing to compile) converts and trains nothing again: every
  # file the import and the stages wrote is left as it was (same bytes, not rewritten).
  written = [d / "base" / "ul2flan.json", d / "base" / "model.gin"] + [
      d / stage / name for stage in ("ul2r", "flan_ul2r", "flan_base")
      for name in ("DONE", "metrics.jsonl", "run.json")]
  before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in written}
  checkpoints_before = sorted(str(p.relative_to(d)) for p in d.glob("*/checkpoints/*"))
  run_pipeline(d, hf_dir, corpus, flan, benchmarks, in_process=True)
  assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in written} == before
  assert sorted(str(p.relative_to(d)) for p in d.glob("*/checkpoints/*")) == checkpoints_before
