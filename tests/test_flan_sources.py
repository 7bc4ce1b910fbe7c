"""Flan-collection exports (JSONL / parquet), raw instruction JSONL, TFDS and HF sources."""

import collections
import itertools
import json
import re

import gin
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import seqio

from ul2flan import config as config_lib
from ul2flan.flan import exports
from ul2flan.flan import rates
from ul2flan.flan import sources

_names = itertools.count()


def unique(prefix: str) -> str:
  return f"{prefix}{next(_names)}"


def export_rows() -> list[dict]:
  """Rows of three tasks from three sources, with several template types."""
  rows = []
  for task, source, types, n in (("glue/sst2:1.0.0", "Flan2021", ("zs_opt", "fs_noopt"), 6),
                                 ("task001_quoref", "NIv2", ("zs_opt",), 4),
                                 ("cot_gsm8k", "CoT", ("zs_opt", "fs_opt"), 5)):
    for i in range(n):
      rows.append({"inputs": f"{task} input {i}", "targets": f"{task} target {i}",
                   "_task_name": task, "_task_source": source,
                   "_template_type": types[i % len(types)], "_template_idx": i % 3})
  return rows


def write_jsonl(path, rows, raw_lines=()):
  with open(path, "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
    for line in raw_lines:
      f.write(line + "\n")
  return str(path)


def write_parquet(path, rows):
  pq.write_table(pa.Table.from_pylist(rows), str(path))
  return str(path)


@gin.configurable
def flan_test_consumer(mixture_or_task_name):
  """Stands for the trainer: a configurable that takes a mixture name."""
  return mixture_or_task_name


def task_rows(task_name, split="train"):
  ds = seqio.TaskRegistry.get(task_name).source.get_dataset(split=split, shuffle=False)
  return sorted((ex["inputs"].decode(), ex["targets"].decode()) for ex in ds.as_numpy_iterator())


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_export_tasks_keep_names_sources_and_template_types(tmp_path, fmt):
  rows = export_rows()
  write = write_jsonl if fmt == "jsonl" else write_parquet
  # Split the rows over two files so a task spans files.
  write(tmp_path / f"a.{fmt}", rows[::2])
  write(tmp_path / f"b.{fmt}", rows[1::2])
  name = unique("exp")
  reg = exports.register_flan_exports(str(tmp_path / f"*.{fmt}"), name=name,
                                      preset="flan2022_submix")
  expected = collections.Counter((r["_task_name"], r["_task_source"], r["_template_type"])
                                 for r in rows)
  got = {(info.name, info.source, info.template_type) for info in reg.tasks}
  assert len(got) == len(expected)
  for (task, source, ttype), n in expected.items():
    seqio_name = f"{name}.{sources.sanitize_task_name(task)}.{ttype}"
    assert (seqio_name, source, ttype) in got
    task_obj = seqio.TaskRegistry.get(seqio_name)
    assert task_obj.num_input_examples("train") == n
    want = sorted((r["inputs"], r["targets"]) for r in rows
                  if r["_task_name"] == task and r["_template_type"] == ttype)
    assert task_rows(seqio_name) == want
  # One mixture per source, and preset submixtures split by template type.
  assert set(reg.source_mixtures) == {"Flan2021", "NIv2", "CoT"}
  assert f"{name}_flan2021_zs_opt" in seqio.MixtureRegistry.names()
  assert f"{name}_cot_fs_opt" in seqio.MixtureRegistry.names()


def test_export_proportion_b_registers_one_task_per_task_name(tmp_path):
  rows = export_rows()
  name = unique("expb")
  reg = exports.register_flan_exports(write_jsonl(tmp_path / "x.jsonl", rows), name=name)
  assert {i.name for i in reg.tasks} == {f"{name}.glue_sst2:1.0.0", f"{name}.task001_quoref",
                                         f"{name}.cot_gsm8k"}
  assert task_rows(f"{name}.cot_gsm8k") == sorted(
      (r["inputs"], r["targets"]) for r in rows if r["_task_name"] == "cot_gsm8k")
  # Calling again with the same settings is a no-op; other settings need another name.
  assert exports.register_flan_exports(str(tmp_path / "x.jsonl"), name=name) is reg
  with pytest.raises(ValueError, match="another `name`"):
    exports.register_flan_exports(str(tmp_path / "x.jsonl"), name=name, on_malformed="skip")


def test_export_sharding_partitions_the_rows(tmp_path):
  rows = export_rows()
  name = unique("shard")
  exports.register_flan_exports(write_jsonl(tmp_path / "x.jsonl", rows), name=name)
  source = seqio.TaskRegistry.get(f"{name}.glue_sst2:1.0.0").source
  shards = [sorted(ex["inputs"].decode() for ex in source.get_dataset(
      split="train", shuffle=False, shard_info=seqio.ShardInfo(i, 3)).as_numpy_iterator())
            for i in range(3)]
  flat = sorted(sum(shards, []))
  assert flat == sorted(r["inputs"] for r in rows if r["_task_name"] == "glue/sst2:1.0.0")
  assert all(shards)


DELETE = object()
MALFORMED = [
    ("inputs", DELETE, "missing field 'inputs'"),
    ("inputs", "   ", "field 'inputs' is empty"),
    ("targets", 3, "field 'targets' is int"),
    ("_template_type", None, "missing field '_template_type'"),
    ("_template_idx", "2", "'_template_idx' is str"),
]


@pytest.mark.parametrize("key, value, message", MALFORMED)
def test_malformed_jsonl_row_fails_with_file_and_line(tmp_path, key, value, message):
  rows = export_rows()[:5]
  rows[2] = dict(rows[2], **{key: value})
  if value is DELETE:
    del rows[2][key]
  path = write_jsonl(tmp_path / "bad.jsonl", rows)
  with pytest.raises(exports.MalformedRowError) as e:
    exports.register_flan_exports(path, name=unique("bad"))
  assert f"{path}:3:" in str(e.value) and message in str(e.value)


def test_invalid_json_line_and_parquet_row_are_located(tmp_path):
  path = write_jsonl(tmp_path / "broken.jsonl", export_rows()[:2], raw_lines=["{not json"])
  with pytest.raises(exports.MalformedRowError, match=rf"{path}:3: .*invalid JSON"):
    exports.register_flan_exports(path, name=unique("bad"))
  rows = export_rows()[:4]
  rows[1] = dict(rows[1], targets="")
  ppath = write_parquet(tmp_path / "broken.parquet", rows)
  with pytest.raises(exports.MalformedRowError, match=rf"{ppath}:row 2: .*'targets' is empty"):
    exports.register_flan_exports(ppath, name=unique("bad"))


def test_skip_policy_leaves_bad_rows_out_and_reports_them(tmp_path):
  rows = export_rows()
  bad_line = 4
  rows[bad_line - 1] = dict(rows[bad_line - 1], inputs="")
  path = write_jsonl(tmp_path / "x.jsonl", rows, raw_lines=["[1, 2]"])
  name = unique("skip")
  reg = exports.register_flan_exports(path, name=name, on_malformed="skip")
  assert reg.index.skipped == [f"{path}:{bad_line}: field 'inputs' is empty",
                               f"{path}:{len(rows) + 1}: expected a JSON object, got list"]
  task = rows[bad_line - 1]["_task_name"]
  kept = [r for i, r in enumerate(rows) if r["_task_name"] == task and i != bad_line - 1]
  seqio_name = f"{name}.{sources.sanitize_task_name(task)}"
  assert seqio.TaskRegistry.get(seqio_name).num_input_examples("train") == len(kept)
  assert task_rows(seqio_name) == sorted((r["inputs"], r["targets"]) for r in kept)


def test_export_file_problems_get_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no files match"):
    exports.register_flan_exports(str(tmp_path / "none*.jsonl"), name=unique("e"))
  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n")
  with pytest.raises(ValueError, match="has no rows"):
    exports.register_flan_exports(str(empty), name=unique("e"))
  rows = [{k: v for k, v in r.items() if k != "_task_source"} for r in export_rows()]
  nocol = write_parquet(tmp_path / "nocol.parquet", rows)
  with pytest.raises(exports.MalformedRowError, match="lacks column.*_task_source"):
    exports.register_flan_exports(nocol, name=unique("e"))
  (tmp_path / "data.csv").write_text("a,b\n")
  with pytest.raises(ValueError, match="unsupported file type"):
    exports.register_flan_exports(str(tmp_path / "data.csv"), name=unique("e"))
  odd = [dict(r, _task_source="Mystery") for r in export_rows()]
  with pytest.raises(ValueError, match="Mystery"):
    exports.register_flan_exports(write_jsonl(tmp_path / "odd.jsonl", odd), name=unique("e"))


def test_export_mixture_needs_only_gin(tmp_path):
  rows = export_rows()
  write_parquet(tmp_path / "part-0.parquet", rows)
  name = unique("gin")
  try:
    gin.parse_config([
        "MIXTURE_OR_TASK_NAME = @flan_export_mixture()",
        "flan_test_consumer.mixture_or_task_name = %MIXTURE_OR_TASK_NAME",
        f"flan_export_mixture.file_pattern = '{tmp_path}/*.parquet'",
        f"flan_export_mixture.name = '{name}'",
        "flan_export_mixture.preset = 'proportion_b'",
        "proportion_b.muffin_cap = 2",
    ])
    assert flan_test_consumer() == name
  finally:
    gin.clear_config()
  # Proportion B with the gin cap: Muffin's task keeps 2 of its 6 examples.
  by_task = {r.task: r for r in rates.compute_rates(name)}
  muffin = by_task[f"{name}.glue_sst2:1.0.0"]
  assert (muffin.examples, muffin.cap, muffin.used, muffin.discarded) == (6, 2, 2, 4)
  weights = {"muffin": 46.0, "niv2": 24.2, "cot": 1.8}  # no T0-SF rows: renormalized
  assert muffin.share == pytest.approx(weights["muffin"] / sum(weights.values()))


# --------------------------------------------------------------------------------------------
# Raw instruction JSONL.

def test_raw_instruction_jsonl_is_formatted_per_task(tmp_path):
  train = [{"task": "capitals", "question": f"Capital number {i}?", "answer": f"city{i}",
            "options": [f"city{i}", "nowhere"]} for i in range(6)]
  train += [{"question": f"Sum {i}?", "answer": str(i), "rationale": f"It is {i}."}
            for i in range(4)]  # no `task`: named after the file
  path = write_jsonl(tmp_path / "mydata.train.jsonl", train)
  name = unique("raw")
  # As docs/flan.md configures it: how rows become prompts is one gin-bound Rendering.
  try:
    config_lib.parse_gin([], ["MIXTURE_OR_TASK_NAME = @raw_instruction_mixture()",
                              "flan_test_consumer.mixture_or_task_name = %MIXTURE_OR_TASK_NAME",
                              f"raw_instruction_mixture.train_file_pattern = '{path}'",
                              f"raw_instruction_mixture.name = '{name}'",
                              "raw_instruction_mixture.rendering = @Rendering()",
                              "Rendering.formats = ['zs_noopt']"])
    got = flan_test_consumer()
  finally:
    gin.clear_config()
  assert got == name
  cap = sources.formatted_examples(f"{name}.capitals", "train")
  assert [e.targets for e in cap] == [f"city{i}" for i in range(6)]
  assert all(f"Capital number {i}?" in e.inputs for i, e in enumerate(cap))
  assert [e.targets for e in sources.formatted_examples(f"{name}.mydata", "train")] == \
      ["0", "1", "2", "3"]
  mixture = seqio.MixtureRegistry.get(name)
  assert {t.name for t in mixture.tasks} == {f"{name}.capitals", f"{name}.mydata"}


@pytest.mark.parametrize("old, new", [
    ("raw_instruction_mixture.formats = ['zs_opt']", "Rendering.formats"),
    ("raw_instruction_mixture.max_shots = 2", "FewShotConfig.max_shots"),
    ("register_tfds_task.family = 'generic_qa'", "Rendering.family"),
])
def test_a_flat_rendering_setting_names_its_new_place(old, new):
  try:
    with pytest.raises(ValueError, match=rf"is now {re.escape(new)}"):
      config_lib.parse_gin([], [old])
  finally:
    gin.clear_config()


@pytest.mark.parametrize("row, message", [
    ({"question": "q"}, "missing field 'answer'"),
    ({"question": "q", "answer": ""}, "'answer' is empty"),
    ({"question": "q", "answer": "a", "options": ["b"]}, "not one of the options"),
    ({"question": "q", "answer": "a", "rationale": 5}, "'rationale' is int"),
])
def test_malformed_raw_row_is_located(tmp_path, row, message):
  path = write_jsonl(tmp_path / "r.jsonl", [{"question": "ok", "answer": "fine"}, row])
  with pytest.raises(ValueError, match=rf"{path}:2: .*{message}"):
    sources.read_raw_instructions(path)
  assert list(sources.read_raw_instructions(path, on_malformed="skip")) == ["r"]


# --------------------------------------------------------------------------------------------
# TFDS and HF datasets.

def test_tfds_dataset_is_formatted(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class UlflanTinyQa(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"query": tfds.features.Text(), "reply": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(3), "validation": self._generate_examples(2)}

    def _generate_examples(self, n):
      for i in range(n):
        yield i, {"query": f"What is {i}?", "reply": f"n{i}"}

  UlflanTinyQa(data_dir=str(tmp_path)).download_and_prepare()
  name = unique("tfds")
  sources.register_tfds_task(name, "ulflan_tiny_qa", data_dir=str(tmp_path),
                             field_map={"question": "query", "answer": "reply"},
                             rendering=sources.Rendering(formats=["zs_noopt"]))
  got = sorted((e.inputs, e.targets) for e in sources.formatted_examples(name, "validation"))
  assert [t for _, t in got] == ["n0", "n1"]
  assert "What is 0?" in got[0][0]
  with pytest.raises(FileNotFoundError, match="not prepared"):
    sources.tfds_examples("ulflan_tiny_qa", "train", data_dir=str(tmp_path / "elsewhere"))


def test_hf_datasets_missing_gives_a_clear_error():
  try:
    import datasets  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    pytest.skip("the optional `datasets` package is installed")
  except ImportError:
    pass
  with pytest.raises(ImportError, match="pip install datasets"):
    sources.register_hf_disk_task(unique("hf"), "/nonexistent")
