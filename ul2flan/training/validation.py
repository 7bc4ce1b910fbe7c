"""Up-front checks of a training run's settings: a message that says what to fix, before anything
is built, written or restored.

Each message names the gin parameter and, where base.gin sets it from one, the macro a user
most likely typed (`BATCH_SIZE`, `TRAIN_STEPS`, ...).
"""

from __future__ import annotations

import importlib.util
from typing import Any, Mapping

import seqio

from ul2flan import row_layout
from ul2flan.checks import check_choice, check_int, check_number
from ul2flan.training import data as data_lib
from ul2flan.training import guards
from ul2flan.training import settings


def _importable(module: Any) -> bool:
  try:
    return isinstance(module, str) and importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):  # a missing parent package, an empty name
    return False


def check_dataset(cfg: data_lib.DatasetConfig, scope: str) -> None:
  """What a DatasetConfig needs before seqio is asked for anything."""
  where = f"{scope}/DatasetConfig"
  if not isinstance(cfg.mixture_or_task_name, str) or not cfg.mixture_or_task_name:
    raise ValueError(f"{where}.mixture_or_task_name (MIXTURE_OR_TASK_NAME) must be a task or "
                     f"mixture name, got {cfg.mixture_or_task_name!r}")
  if cfg.module is not None and not _importable(cfg.module):
    raise ValueError(f"{where}.module (MIXTURE_OR_TASK_MODULE) {cfg.module!r} is not an "
                     f"importable module; name the module that registers the task, or None")
  data_lib.get_task(cfg.mixture_or_task_name, cfg.module)  # registered, or says what is
  check_int(cfg.batch_size, f"{where}.batch_size (BATCH_SIZE)")
  check_int(cfg.num_data_shards, f"{where}.num_data_shards", allow_none=True)
  check_choice(cfg.feature_converter, row_layout.KINDS,
               f"{where}.feature_converter (FEATURE_CONVERTER)")
  lengths = cfg.task_feature_lengths
  name = f"{where}.task_feature_lengths (TASK_FEATURE_LENGTHS)"
  if not isinstance(lengths, Mapping):
    raise ValueError(f"{name} must be a dict such as {{'inputs': 1024, 'targets': 1024}}, got "
                     f"{lengths!r}")
  needed = row_layout.RowLayout(cfg.feature_converter).task_features
  missing = [k for k in needed if k not in lengths]
  if missing:
    raise ValueError(f"{name} = {dict(lengths)} has no {missing} length, which the "
                     f"{cfg.feature_converter!r} feature converter needs")
  for key, length in lengths.items():
    check_int(length, f"{name}[{key!r}]")


def check_train_settings(train_dataset_cfg: Any, train_cfg: Any, eval_cfg: Any) -> None:
  """The dataset, loop and evaluation settings of `train()`; raises ValueError on the first bad
  one, naming the gin parameter (and the macro base.gin sets it from)."""
  if not isinstance(train_dataset_cfg, data_lib.DatasetConfig):
    raise ValueError(f"train.train_dataset_cfg must be a DatasetConfig (e.g. "
                     f"@train/DatasetConfig()), got {train_dataset_cfg!r}")
  if not isinstance(train_cfg, settings.TrainConfig):
    raise ValueError(f"train.train_cfg must be a TrainConfig (e.g. @TrainConfig()), got "
                     f"{train_cfg!r}")
  if not isinstance(eval_cfg, settings.EvalConfig):
    raise ValueError(f"train.eval_cfg must be an EvalConfig (e.g. @EvalConfig()), got "
                     f"{eval_cfg!r}")
  check_int(train_cfg.total_steps, "TrainConfig.total_steps (TRAIN_STEPS)")
  check_int(train_cfg.log_period, "TrainConfig.log_period")
  check_int(train_cfg.num_microbatches, "TrainConfig.num_microbatches")
  check_int(train_cfg.seed, "TrainConfig.seed (SEED)", minimum=0)
  check_choice(train_cfg.on_nonfinite, guards.POLICIES, "TrainConfig.on_nonfinite")
  check_int(train_cfg.max_consecutive_skips, "TrainConfig.max_consecutive_skips")
  check_dataset(train_dataset_cfg, "train")
  check_int(eval_cfg.period, "EvalConfig.period (EVAL_PERIOD; 0 = no evaluation)", minimum=0)
  if eval_cfg.enabled:
    check_int(eval_cfg.steps, "EvalConfig.steps")
    check_dataset(eval_cfg.dataset_cfg, "eval")
  if eval_cfg.guards_text:
    check_int(eval_cfg.text_steps, "EvalConfig.text_steps")
    if eval_cfg.text_max_rise is not None:
      check_number(eval_cfg.text_max_rise, "EvalConfig.text_max_rise (None: report only)", 0.0)
    check_dataset(eval_cfg.text_dataset_cfg, "text")


def _tasks(task_or_mixture) -> list:
  if isinstance(task_or_mixture, seqio.Mixture):
    return list(task_or_mixture.tasks)
  return [task_or_mixture]


def check_data(cfg: data_lib.DatasetConfig, scope: str) -> None:
  """Every task the dataset reads offers its split and finds its files, before any training.

  (`check_dataset` checks the settings; this touches the sources: file globs, prepared TFDS
  datasets, Flan export scans.)"""
  for task in _tasks(data_lib.get_task(cfg.mixture_or_task_name, cfg.module)):
    source = task.source
    if cfg.split not in source.splits:
      raise ValueError(
          f"{scope}/DatasetConfig: task {task.name!r} has no {cfg.split!r} split (it has "
          f"{sorted(source.splits)}). Give the data one (a '{{split}}' file pattern, or a "
          f"validation file), or set EVAL_PERIOD = 0 to train without evaluation.")
    try:
      source.list_shards(cfg.split)
    except (ValueError, FileNotFoundError) as e:
      raise ValueError(f"{scope}/DatasetConfig: task {task.name!r}, split {cfg.split!r}: {e}"
                       ) from None
