"""Metric writers (clu): `metrics*.jsonl` for scripts and TensorBoard event files, on process 0.

`metrics.jsonl` holds one JSON object per logged step. Per-group sums from the steps
(`nll_sum/<group>`, `correct_sum/<group>`, `loss_weight/<group>`: one group per UL2R denoiser,
`ul2flan.training.steps`) are written as `loss/<group>` and `accuracy/<group>` over the tokens of
the logged window, with `loss_weight/<group>` (`per_group`); TensorBoard shows them under `loss`
and `accuracy`. A resumed run first drops the rows past the step it resumed from (written before
a checkpoint that never committed), so no step appears twice. Both files go through epath, so a
`gs://` model dir works: object stores cannot append, so there the jsonl file is rewritten whole
at each flush. TensorBoard event files are tensorboard's records (its `RecordWriter` framing and
`Event` protos) written through an epath file, so they go to a bucket the same way; tensorboardX
did the same but imports torch wherever torch is installed (1.5 s of every process's start).
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import time
from typing import Any, Mapping

from clu import metric_writers
from etils import epath
import jax
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.summary.writer import record_writer

from ul2flan import paths


# The steps' per-group sums (`steps.GROUP_SUMS`) and the figures written from them.
GROUP_RATIOS = {"nll_sum": "loss", "correct_sum": "accuracy"}
GROUP_WEIGHT = "loss_weight"


def per_group(scalars: Mapping[str, float]) -> dict[str, float]:
  """`scalars` with each group's `nll_sum/<g>` and `correct_sum/<g>` turned into `loss/<g>` and
  `accuracy/<g>` (divided by `loss_weight/<g>`); a group without weight is left out. Sums averaged
  over a window divide to the same figure as the window's sums, so a logged window's `loss/<g>`
  is its tokens' mean nll. Other scalars pass unchanged."""
  out = {}
  for key, value in scalars.items():
    stat, _, group = key.partition("/")
    if not group or stat not in (*GROUP_RATIOS, GROUP_WEIGHT):
      out[key] = value
      continue
    weight = scalars.get(f"{GROUP_WEIGHT}/{group}", 0.0)
    if weight <= 0:
      continue
    if stat == GROUP_WEIGHT:
      out[key] = value
    else:
      out[f"{GROUP_RATIOS[stat]}/{group}"] = value / weight
  return out


def metrics_path(model_dir: str, subdir: str = "train") -> epath.Path:
  name = "metrics.jsonl" if subdir == "train" else f"metrics_{subdir}.jsonl"
  return epath.Path(model_dir) / name


class _ScalarWriter(metric_writers.MetricWriter):
  """A clu writer of scalars only: the other kinds of summary are not written."""

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    pass

  def close(self):
    pass


class JsonlWriter(_ScalarWriter):
  """Scalars as JSON lines, one object per step: {"step": N, name: value, ...}."""

  def __init__(self, path: epath.Path, resume_step: int = 0):
    self.path = epath.Path(path)
    self.append = not paths.is_url(self.path)
    self.lines: list[str] = []  # what the file holds (kept only where it is rewritten whole)
    if self.path.exists():  # forget rows of steps that will be trained again
      rows = [r for r in read_metrics(self.path) if r["step"] <= resume_step]
      self.lines = [json.dumps(r) + "\n" for r in rows]
      self.path.write_text("".join(self.lines))
    if self.append:
      self.lines = []

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    line = json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n"
    if self.append:
      with self.path.open("a") as f:
        f.write(line)
    else:
      self.lines.append(line)
      self.path.write_text("".join(self.lines))


# Tells apart event files a process opens in the same second (TensorBoard's own naming).
_EVENT_FILE_IDS = itertools.count()


class TensorBoardWriter(_ScalarWriter):
  """Scalars as a TensorBoard event file under `logdir` (local or a URL): TensorBoard reads every
  `events.out.tfevents.*` file of the dir, so a resumed run adds a file of its own."""

  def __init__(self, logdir: str):
    directory = epath.Path(logdir)
    directory.mkdir(parents=True, exist_ok=True)
    name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}."
            f"{next(_EVENT_FILE_IDS)}")
    self._file = (directory / name).open("wb")
    self._records = record_writer.RecordWriter(self._file)
    self._write(event_pb2.Event(file_version="brain.Event:2"))

  def _write(self, event: event_pb2.Event) -> None:
    event.wall_time = time.time()
    self._records.write(event.SerializeToString())

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
    self._write(event_pb2.Event(step=int(step), summary=summary_pb2.Summary(value=values)))

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


class PerGroupWriter(metric_writers.MultiWriter):
  """A MultiWriter whose scalars go through `per_group` first."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    super().write_scalars(step, per_group(scalars))


def create_writer(model_dir: str, subdir: str = "train",
                  resume_step: int = 0) -> metric_writers.MetricWriter:
  """jsonl + TensorBoard (under MODEL_DIR/tensorboard/<subdir>) on process 0; nothing elsewhere.
  Per-group sums are written as per-group loss and accuracy (`per_group`)."""
  if jax.process_index() != 0:
    return metric_writers.MultiWriter([])
  epath.Path(model_dir).mkdir(parents=True, exist_ok=True)
  return PerGroupWriter([
      JsonlWriter(metrics_path(model_dir, subdir), resume_step),
      TensorBoardWriter(paths.join(model_dir, "tensorboard", subdir)),
  ])


def read_metrics(path: str | epath.Path) -> list[dict]:
  """The rows of a metrics file; a last line cut off mid-write (a killed run) is left out."""
  path = epath.Path(path)
  if not path.exists():
    return []
  lines = path.read_text().splitlines(keepends=True)
  rows = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      if i == len(lines) - 1 and not line.endswith("\n"):
        break
      raise ValueError(f"{path}, line {i + 1}, is not a JSON object: {line[:200]!r}") from None
  return rows
