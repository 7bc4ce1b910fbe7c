"""Import / export plumbing: safetensors against the reference library, sharding, the model dir,
and bad input (a clear error naming the file, nothing half-written)."""

import json
import os
import shutil

import ml_dtypes
import numpy as np
from tokenizers import processors
import pytest
import safetensors
import safetensors.torch
import torch

import hf_reference
from helpers import run_cli
from ul2flan import config as config_lib
from ul2flan.hf import exporter, families, importer, output_dir, safetensors_io, weights
from ul2flan.model.config import DecoderConfig


# ---- safetensors, both directions against the library ------------------------------------------
def test_reader_reads_what_the_library_writes(tmp_path):
  tensors = {"w": torch.randn(5, 7).to(torch.bfloat16), "b": torch.randn(3),
             "h": torch.randn(2, 2).to(torch.float16), "i": torch.arange(4)}
  path = str(tmp_path / "x.safetensors")
  safetensors.torch.save_file(tensors, path, metadata={"format": "pt"})
  infos = safetensors_io.read_header(path)
  assert infos["w"].dtype == np.dtype(ml_dtypes.bfloat16) and infos["w"].shape == (5, 7)
  for name, t in tensors.items():
    got = safetensors_io.read_tensor(infos[name])
    np.testing.assert_array_equal(got.astype(np.float64), t.double().numpy())
  rows = safetensors_io.read_tensor(infos["w"], slice(1, 3))
  np.testing.assert_array_equal(rows.astype(np.float64), tensors["w"][1:3].double().numpy())


def test_writer_output_reads_back_with_the_library_and_shards_above_the_threshold(tmp_path):
  rng = np.random.RandomState(0)
  arrays = {f"t{i}": rng.randn(10, 20).astype(np.float32) for i in range(5)}
  arrays["bf"] = rng.randn(3, 4).astype(ml_dtypes.bfloat16)
  to_write = [safetensors_io.TensorToWrite(k, v.shape, v.dtype, lambda v=v: v)
              for k, v in arrays.items()]
  files = safetensors_io.write_weights(str(tmp_path), to_write, max_shard_bytes=2000)
  assert safetensors_io.INDEX_FILE in files and len(files) == 4  # 800-byte tensors, 2 per shard
  index = json.load(open(tmp_path / safetensors_io.INDEX_FILE))
  assert set(index["weight_map"]) == set(arrays)
  for name, array in arrays.items():
    with safetensors.safe_open(str(tmp_path / index["weight_map"][name]), framework="pt") as f:
      assert f.metadata() == {"format": "pt"}
      np.testing.assert_array_equal(f.get_tensor(name).double().numpy(),
                                    array.astype(np.float64))
  single = tmp_path / "single"
  single.mkdir()
  assert safetensors_io.write_weights(str(single), to_write) == [safetensors_io.SINGLE_FILE]


# ---- sharded import and export ------------------------------------------------------------------
def test_sharded_import_and_sharded_export_round_trip(tmp_path):
  import transformers
  model = hf_reference.build_model("llama", seed=3)
  hf_dir = hf_reference.save_model(model, str(tmp_path / "hf"), max_shard_size="100KB")
  assert os.path.exists(os.path.join(hf_dir, safetensors_io.INDEX_FILE))
  out = importer.import_hf(hf_dir, str(tmp_path / "imported"), dtype="bfloat16")
  info = config_lib.read_run_info(out)
  assert info.decoder_config.dtype == "bfloat16"
  # 300 tokens in 400 embedding rows: the sentinels take the unused rows, the model keeps 400.
  assert info.vocabulary["kind"] == "hf" and info.vocabulary["sentinels"] == "unused_rows"
  assert info.vocabulary["path"] == os.path.join(out, "tokenizer")
  assert info.decoder_config.vocab_size == 400
  assert os.path.exists(os.path.join(out, "tokenizer", "tokenizer.json"))
  assert "DecoderConfig.rope_scaling = 'llama3'" in open(os.path.join(out, "model.gin")).read()
  exported = exporter.export_hf(out, str(tmp_path / "exported"), dtype="bfloat16",
                                max_shard_bytes=60_000)
  files = os.listdir(exported)
  assert safetensors_io.INDEX_FILE in files and {"config.json", "generation_config.json",
                                                 "tokenizer.json"} <= set(files)
  # bf16 round trip: the export holds exactly the bf16-rounded source weights, except the
  # never-trained rows past the tokenizer, which import set to the mean of the trained rows.
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32)
  source = {k: v.to(torch.bfloat16).float() for k, v in model.state_dict().items()}
  for name, value in reloaded.state_dict().items():
    rows = slice(0, 300) if name in ("model.embed_tokens.weight", "lm_head.weight") else slice(None)
    np.testing.assert_array_equal(value.numpy()[rows], source[name].numpy()[rows], err_msg=name)
  mean = source["model.embed_tokens.weight"][:300].double().mean(0)
  np.testing.assert_allclose(reloaded.state_dict()["model.embed_tokens.weight"][350].numpy(),
                             mean.numpy(), atol=1e-2)
  # The sentinels are tokens of the exported tokenizer, at the ids the model trained them.
  tok = transformers.AutoTokenizer.from_pretrained(exported)
  assert tok.convert_tokens_to_ids("<extra_id_0>") == 300
  assert tok("a <extra_id_3> b")["input_ids"].count(303) == 1


def test_params_are_chunked_only_where_the_chunks_stay_large(tmp_path, monkeypatch):
  """orbax cuts an array only at divisors of its dimensions: with a prime row count (an
  embedding grown by sentinel rows) a chunk target would write one file per row. Such an array
  is written whole; a divisible one in chunks of the target size. Both restore exactly."""
  import jax  # pylint: disable=g-import-not-at-top
  from ul2flan import checkpoints  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(importer, "SAVE_CHUNK_BYTES", 4096)
  rng = np.random.RandomState(0)
  params = {"embedding": rng.randn(4099, 8).astype(np.float32),  # 4099 is prime: 128 KB
            "dense": rng.randn(64, 256).astype(np.float32)}      # 64 KB: 16 chunks of 4 KB
  importer.save_params(str(tmp_path), params)
  step_dir = tmp_path / "checkpoints" / "0" / "params"
  files = {name: [p for p in (step_dir / name).rglob("*") if p.is_file()] for name in params}
  assert len(files["embedding"]) <= 4, files["embedding"]  # metadata and one chunk, not 4099
  assert len(files["dense"]) >= 16
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=jax.sharding.
                                                         SingleDeviceSharding(jax.devices()[0])),
                          params)
  restored, step = checkpoints.restore_params(str(tmp_path), abstract)
  assert step == 0
  for name, want in params.items():
    np.testing.assert_array_equal(np.asarray(restored[name]), want)


# ---- the output dir -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_hf_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("small")
  return hf_reference.save_model(hf_reference.build_model("qwen2", seed=1), str(root / "hf"))


def copy_hf(src, dst) -> str:
  shutil.copytree(src, dst)
  return str(dst)


def assert_nothing_written(out):
  assert not os.path.exists(out) and not os.path.exists(out + ".partial")


def test_rerun_reuses_the_import_and_another_model_is_refused(small_hf_dir, tmp_path):
  out = str(tmp_path / "out")
  importer.import_hf(small_hf_dir, out)
  stamp = os.path.getmtime(os.path.join(out, output_dir.MARKER))
  assert importer.import_hf(small_hf_dir, out) == out
  assert os.path.getmtime(os.path.join(out, output_dir.MARKER)) == stamp
  other = copy_hf(small_hf_dir, tmp_path / "other")
  config = json.load(open(os.path.join(other, "config.json")))
  config["rms_norm_eps"] = 1e-6
  json.dump(config, open(os.path.join(other, "config.json"), "w"))
  with pytest.raises(output_dir.OutputDirError, match="already holds a different model"):
    importer.import_hf(other, out)
  with pytest.raises(output_dir.OutputDirError, match="already holds a different model"):
    importer.import_hf(small_hf_dir, out, dtype="bfloat16")
  cluttered = tmp_path / "cluttered"
  cluttered.mkdir()
  (cluttered / "notes.txt").write_text("mine")
  with pytest.raises(output_dir.OutputDirError, match="holds other files"):
    importer.import_hf(small_hf_dir, str(cluttered))
  assert os.listdir(cluttered) == ["notes.txt"]


# ---- bad input ----------------------------------------------------------------------------------
def edit_config(hf_dir, **changes):
  path = os.path.join(hf_dir, "config.json")
  config = json.load(open(path))
  config.update(changes)
  json.dump(config, open(path, "w"))


@pytest.mark.parametrize("change, error, message", [
    (dict(model_type="gpt2"), families.UnsupportedModelError,
     r"model_type 'gpt2' is not supported; ul2flan imports llama, mistral, qwen2, qwen3, gemma2"),
    (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}),
     families.UnsupportedModelError, r"RoPE type 'yarn'.*config.json|config.json.*RoPE type"),
    (dict(partial_rotary_factor=0.5), families.UnsupportedModelError, "partial_rotary_factor"),
    (dict(intermediate_size=120), ValueError,
     r"model.layers.0.mlp.gate_proj.weight in .*model.safetensors: shape \(112, 64\), but "
     r"config.json implies \(120, 64\)"),
    (dict(hidden_size=None), ValueError, r"config.json has no 'hidden_size'"),
])
def test_bad_config_is_a_clear_error_and_writes_nothing(small_hf_dir, tmp_path, change, error,
                                                         message):
  hf_dir = copy_hf(small_hf_dir, tmp_path / "hf")
  edit_config(hf_dir, **change)
  out = str(tmp_path / "out")
  with pytest.raises(error, match=message):
    importer.import_hf(hf_dir, out)
  assert_nothing_written(out)


def test_missing_shard_missing_tokenizer_and_unknown_tensor(tmp_path):
  hf_dir = hf_reference.save_model(hf_reference.build_model("llama_tied", seed=2),
                                   str(tmp_path / "hf"), max_shard_size="100KB")
  out = str(tmp_path / "out")
  shard = sorted(f for f in os.listdir(hf_dir) if f.startswith("model-"))[1]
  os.rename(os.path.join(hf_dir, shard), os.path.join(tmp_path, shard))
  with pytest.raises(FileNotFoundError, match=rf"index.json lists 1 shard\(s\) that are not in "
                                              rf".*\['{shard}'\]"):
    importer.import_hf(hf_dir, out)
  os.rename(os.path.join(tmp_path, shard), os.path.join(hf_dir, shard))
  os.remove(os.path.join(hf_dir, "tokenizer.json"))
  with pytest.raises(FileNotFoundError, match=r"has no tokenizer.json .*save_pretrained"):
    importer.import_hf(hf_dir, out)
  assert_nothing_written(out)


@pytest.mark.parametrize("sentinels, message", [
    ("reserved", r"tokenizer.json: 100 free ids are needed .* 0 tokens match reserved_pattern"),
    ("unused_rows", r"tokenizer.json: 100 free ids are needed .* embedding_size 310 leaves 10"),
])
def test_too_few_free_ids_for_the_sentinels(tmp_path, sentinels, message):
  hf_dir = hf_reference.save_model(hf_reference.build_model("qwen2", vocab_size=310),
                                   str(tmp_path / "hf"))
  out = str(tmp_path / "out")
  with pytest.raises(ValueError, match=message):
    importer.import_hf(hf_dir, out, sentinels=sentinels)
  assert_nothing_written(out)


def test_a_feature_the_decoder_lacks_is_named(small_hf_dir, tmp_path):
  hf_dir = copy_hf(small_hf_dir, tmp_path / "hf")
  edit_config(hf_dir, model_type="llama", mlp_bias=True)
  with pytest.raises(families.UnsupportedModelError, match="mlp_bias=true"):
    importer.import_hf(hf_dir, str(tmp_path / "out"))
  # Qwen2's q/k/v biases read as a llama config without attention_bias: tensors left over.
  edit_config(hf_dir, mlp_bias=False)
  with pytest.raises(ValueError, match=r"self_attn.q_proj.bias .*not a parameter of this model"):
    importer.import_hf(hf_dir, str(tmp_path / "out"))
  assert_nothing_written(str(tmp_path / "out"))


def test_palm_style_model_cannot_be_exported():
  with pytest.raises(families.UnsupportedModelError,
                     match=r"parallel_block=True .*norm_type='layernorm'"):
    families.hf_config(DecoderConfig())


def test_cli_reports_errors_without_a_traceback(small_hf_dir, tmp_path):
  hf_dir = copy_hf(small_hf_dir, tmp_path / "hf")
  edit_config(hf_dir, model_type="falcon")
  result = run_cli(["import-hf", hf_dir, str(tmp_path / "out")])
  assert result.returncode == 2, result.stderr
  assert "error:" in result.stderr and "'falcon' is not supported" in result.stderr
  assert "Traceback" not in result.stderr


@pytest.mark.parametrize("scan_layers", [False, True])
def test_sharded_loading_equals_host_loading(small_hf_dir, tmp_path, scan_layers):
  """The multi-host path (each device's slice converted on its own) against the host path."""
  import jax
  from ul2flan import checkpoints, partitioning
  from ul2flan.model import decoder as decoder_lib
  from ul2flan.hf import import_vocabulary
  vocab = import_vocabulary.plan(small_hf_dir, 400)
  cfg = importer.decoder_config(small_hf_dir, scan_layers=scan_layers,
                                vocab_size=vocab.layout.vocab_size)
  source = importer.Source(safetensors_io.WeightsReader(small_hf_dir), 400, vocab.layout, True)
  partitioner = partitioning.Partitioner({"fsdp": 2, "model": 2})
  sharded = importer.load_params_sharded(source, cfg, partitioner, "float32")
  assert any(not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(sharded))
  on_host = importer.load_params_on_host(source, cfg, "float32")
  for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(on_host)):
    np.testing.assert_array_equal(np.asarray(a), b)
  importer.save_params(str(tmp_path), sharded)
  restored, _ = checkpoints.restore_params(str(tmp_path), decoder_lib.abstract_params(
      cfg, partitioner))
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(on_host)):
    np.testing.assert_array_equal(np.asarray(a), b)


@pytest.mark.parametrize("policy, hf_rows, bos, source_dtype", [
    ("unused_rows", 400, True, np.float32), ("new_rows", 300, False, ml_dtypes.bfloat16),
    ("new_rows", 300, True, np.float32)])
def test_embedding_rows_written_in_place_equal_model_embedding(tmp_path, policy, hf_rows, bos,
                                                               source_dtype):
  """The importer's lean row mapping against token_layout.model_embedding (the reference)."""
  from ul2flan.hf_vocab import token_layout
  from ul2flan.hf_vocab import vocabulary as hf_tokenizer
  tokenizer = hf_reference.train_tokenizer(300)
  bos_id = tokenizer.convert_tokens_to_ids("<s>")
  if not bos:  # a tokenizer that adds no BOS (Qwen, SmolLM2): rows get a hidden start slot
    tokenizer.bos_token = None
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A", pair="$A $B")
  tokenizer.save_pretrained(str(tmp_path))
  rows = np.random.RandomState(0).randn(hf_rows, 8).astype(source_dtype)
  safetensors_io.write_weights(str(tmp_path), [safetensors_io.TensorToWrite(
      "model.embed_tokens.weight", rows.shape, rows.dtype, lambda: rows)])
  layout = hf_tokenizer.HfVocabulary(str(tmp_path), token_layout.SentinelPolicy(
      policy, 100, hf_rows)).layout
  assert (layout.swap == (0, bos_id)) == bos and layout.start_copies is None
  assert (0 in layout.untrained_ids) != bos  # a hidden start slot's row holds the trained mean
  source = importer.Source(safetensors_io.WeightsReader(str(tmp_path)), hf_rows, layout, True)
  want = token_layout.model_embedding(rows, layout, reinit=True)
  for dtype in (np.float32, ml_dtypes.bfloat16):
    dest = np.empty((layout.vocab_size, 8), dtype)
    source.read_into(weights.tensor_maps(DecoderConfig(vocab_size=layout.vocab_size))[0],
                     "model.embed_tokens.weight", dest)
    np.testing.assert_array_equal(dest, want.astype(dtype))


def test_a_hf_dir_given_as_a_checkpoint_says_how_to_convert_it(small_hf_dir):
  from ul2flan import checkpoints
  with pytest.raises(FileNotFoundError, match=r"is a Hugging Face model dir.*ul2flan import-hf"):
    checkpoints.resolve_step_dir(small_hf_dir)
