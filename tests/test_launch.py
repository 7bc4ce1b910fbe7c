"""Launch scripts pass arguments through intact, and the Slurm script requeues a preempted run.

`srun`, `scontrol`, `gcloud`, `make` and the `ul2flan` executable are replaced by stand-ins put
first on PATH (or named by $UL2FLAN) that record the argv they receive. The expected argv is
written out by hand here, from the README's own bindings; it is then parsed by ul2flan's gin
handling to check it means what the README says.
"""

import json
import os
import stat
import subprocess
import sys
import textwrap

import gin
import pytest

from helpers import REPO_ROOT
from ul2flan import config
from ul2flan.commands import configurables  # noqa: F401  pylint: disable=unused-import

README_BINDINGS = [
    "--gin.INITIAL_CHECKPOINT_PATH='gs://bucket/palm-8b'",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 1024, 'targets': 1024}",
    "--gin.MIXTURE_OR_TASK_NAME='c4_ul2r'",
]
# A value a shell would mangle if it re-parsed it: spaces, $, backquotes, both quote kinds.
NASTY = "--gin.train.stage_name=\"ul2r 'big' $HOME `date` a;b|c&\""
GIN_FILES = ["gin_configs/models/palm_8b.gin", "gin_configs/runs/ul2r.gin"]


def _write(path, text, executable=True):
  path.write_text(textwrap.dedent(text).lstrip())
  if executable:
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
  return str(path)


def _recorder(path, record_dir):
  """An executable that records its argv (and SLURM_PROCID) and exits with $FAKE_EXIT."""
  return _write(path, f"""
      #!{sys.executable}
      import json, os, sys, uuid
      with open(os.path.join({str(record_dir)!r}, uuid.uuid4().hex + ".json"), "w") as f:
        json.dump({{"argv": sys.argv[1:], "procid": os.environ.get("SLURM_PROCID")}}, f)
      sys.exit(int(os.environ.get("FAKE_EXIT", "0")))
      """)


def _records(record_dir):
  out = []
  for name in sorted(os.listdir(record_dir)):
    if name.endswith(".json"):
      with open(os.path.join(record_dir, name)) as f:
        out.append(json.load(f))
  return out


@pytest.fixture
def fakes(tmp_path):
  bin_dir, records = tmp_path / "bin", tmp_path / "records"
  bin_dir.mkdir()
  records.mkdir()
  # srun: every task runs the same argv, with its own SLURM_PROCID; exit status: the highest.
  _write(bin_dir / "srun", """
      #!/usr/bin/env bash
      pids=()
      for ((i = 0; i < SLURM_NNODES; i++)); do SLURM_PROCID=$i "$@" & pids+=($!); done
      status=0
      for pid in "${pids[@]}"; do wait "$pid" || { s=$?; (( s > status )) && status=$s; }; done
      exit $status
      """)
  _write(bin_dir / "scontrol", f"""
      #!/usr/bin/env bash
      case $1 in
        show) printf 'node-a\\nnode-b\\n' ;;
        requeue) echo "$2" >> {records}/requeued ;;
        *) exit 1 ;;
      esac
      """)
  _write(bin_dir / "make", "#!/usr/bin/env bash\nexit 0\n")
  _write(bin_dir / "gcloud", f"""
      #!{sys.executable}
      import json, sys
      json.dump(sys.argv[1:], open({str(records / 'gcloud.argv')!r}, "w"))
      """)
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
         "UL2FLAN": _recorder(bin_dir / "ul2flan", records)}
  return {"env": env, "records": records, "bin": bin_dir, "tmp": tmp_path}


def _slurm(fakes, exit_code):
  env = {**fakes["env"], "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_NNODES": "2",
         "SLURM_JOB_ID": "4242", "FAKE_EXIT": str(exit_code)}
  return subprocess.run(["bash", "launch/slurm_gpu.sbatch", "gs://bucket/u-palm-8b", *GIN_FILES,
                         *README_BINDINGS, NASTY], cwd=REPO_ROOT, env=env, capture_output=True,
                        text=True, timeout=60)


def _means_what_readme_says(argv):
  """The recorded argv, parsed by ul2flan: the README's values, nothing re-split."""
  bindings, rest = config.split_gin_args(argv[1:])
  files = [a.split("=", 1)[1] for a in rest if a.startswith("--gin_file=")]
  try:
    config.parse_gin(files, bindings, command="train")
    assert config.query("%INITIAL_CHECKPOINT_PATH") == "gs://bucket/palm-8b"
    assert config.query("%TASK_FEATURE_LENGTHS") == {"inputs": 1024, "targets": 1024}
    assert config.query("%MIXTURE_OR_TASK_NAME") == "c4_ul2r"
    assert gin.query_parameter("train.stage_name") == "ul2r 'big' $HOME `date` a;b|c&"
  finally:
    config.parse_gin([])


def test_slurm_passes_arguments_intact_to_every_task(fakes):
  r = _slurm(fakes, 0)
  assert r.returncode == 0, r.stderr
  runs = sorted(_records(fakes["records"]), key=lambda rec: rec["procid"])
  assert [rec["procid"] for rec in runs] == ["0", "1"]
  for rec in runs:
    assert rec["argv"] == [
        "train", *[f"--gin_file={f}" for f in GIN_FILES], *README_BINDINGS, NASTY,
        "--model_dir=gs://bucket/u-palm-8b", "--coordinator_address=node-a:12345",
        "--num_processes=2", f"--process_id={rec['procid']}"]
  _means_what_readme_says(runs[0]["argv"])
  assert not (fakes["records"] / "requeued").exists()


@pytest.mark.parametrize("exit_code,requeued", [(75, True), (3, False), (1, False)])
def test_slurm_requeues_only_a_preempted_run(fakes, exit_code, requeued):
  r = _slurm(fakes, exit_code)
  assert r.returncode == exit_code
  path = fakes["records"] / "requeued"
  assert path.exists() == requeued
  if requeued:
    assert path.read_text().split() == ["4242"]
    assert "requeueing job 4242" in r.stderr


def test_tpu_vm_command_rebuilds_the_same_arguments_on_the_worker(fakes):
  env = {**fakes["env"], "FSDP": "4"}
  r = subprocess.run(["bash", "launch/tpu_vm.sh", "my-v4", "us-central2-b",
                      "gs://bucket/u-palm-8b", *GIN_FILES, "--", *README_BINDINGS, NASTY],
                     cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
  assert r.returncode == 0, r.stderr
  gcloud = json.loads((fakes["records"] / "gcloud.argv").read_text())
  assert gcloud[:7] == ["compute", "tpus", "tpu-vm", "ssh", "my-v4", "--zone=us-central2-b",
                        "--worker=all"]
  assert gcloud[7].startswith("--command=") and len(gcloud) == 8
  # What a worker does with the command: its shell, in its home, with the checkout in ul2flan/.
  home = fakes["tmp"] / "worker_home"
  venv_bin = home / "ul2flan" / ".venv" / "bin"
  venv_bin.mkdir(parents=True)
  _write(venv_bin / "pip", "#!/usr/bin/env bash\nexit 0\n")
  _recorder(venv_bin / "ul2flan", fakes["records"])
  worker = subprocess.run(["bash", "-c", gcloud[7][len("--command="):]], cwd=home,
                          env={**fakes["env"], "HOME": str(home)}, capture_output=True,
                          text=True, timeout=60)
  assert worker.returncode == 0, worker.stderr
  (rec,) = _records(fakes["records"])
  assert rec["argv"] == [
      "train", *[f"--gin_file={f}" for f in GIN_FILES],
      "--gin.MESH_SHAPE={'data': -1, 'fsdp': 4, 'model': 1}",
      "--model_dir=gs://bucket/u-palm-8b", *README_BINDINGS, NASTY]
  _means_what_readme_says(rec["argv"])


def test_local_multiprocess_passes_arguments_intact(fakes):
  r = subprocess.run(["bash", "launch/local_multiprocess.sh", "/tmp/run dir", *README_BINDINGS,
                      NASTY], cwd=REPO_ROOT, env={**fakes["env"], "FAKE_EXIT": "75"},
                     capture_output=True, text=True, timeout=60)
  assert r.returncode == 75  # a process's status is the script's, not lost in `wait`
  runs = _records(fakes["records"])
  assert len(runs) == 2
  for rec in runs:
    argv = rec["argv"]
    process_id = argv[argv.index("--num_processes=2") + 1]
    assert argv == ["train", "--gin_file=gin_configs/models/tiny.gin",
                    "--gin_file=gin_configs/runs/pretrain.gin", "--model_dir=/tmp/run dir",
                    "--coordinator_address=127.0.0.1:23456", "--num_processes=2", process_id,
                    "--cpu_collectives=gloo", *README_BINDINGS, NASTY]
  assert sorted(rec["argv"][6] for rec in runs) == ["--process_id=0", "--process_id=1"]
