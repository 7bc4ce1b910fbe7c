"""Up-front checks of a training run's settings: a message that says what to fix, before anything
is built, written or restored.

Each message names the gin parameter and, where base.gin sets it from one, the macro a user
most likely typed (`BATCH_SIZE`, `TRAIN_STEPS`, ...).
"""

from __future__ import annotations

import importlib.util
from typing import Any, Mapping

from ul2flan.checks import check_choice, check_int
from ul2flan.training import data as data_lib

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
  check_choice(cfg.feature_converter, data_lib.FEATURE_CONVERTERS,
               f"{where}.feature_converter (FEATURE_CONVERTER)")
  lengths = cfg.task_feature_lengths
  name = f"{where}.task_feature_lengths (TASK_FEATURE_LENGTHS)"
  if not isinstance(lengths, Mapping):
    raise ValueError(f"{name} must be a dict such as {{'inputs': 1024, 'targets': 1024}}, got "
                     f"{lengths!r}")
  needed = sorted(data_lib.FEATURE_CONVERTERS[cfg.feature_converter].TASK_FEATURES)
  missing = [k for k in needed if k not in lengths]
  if missing:
    raise ValueError(f"{name} = {dict(lengths)} has no {missing} length, which the "
                     f"{cfg.feature_converter!r} feature converter needs")
  for key, length in lengths.items():
    check_int(length, f"{name}[{key!r}]")


def check_train_settings(*, train_dataset_cfg: data_lib.DatasetConfig,
                         eval_dataset_cfg: data_lib.DatasetConfig | None, total_steps: Any,
                         eval_period: Any, eval_steps: Any, log_period: Any,
                         num_microbatches: Any, seed: Any) -> None:
  """Step counts, periods and batch settings of `train()`; raises ValueError on the first bad one."""
  if not isinstance(train_dataset_cfg, data_lib.DatasetConfig):
    raise ValueError(f"train.train_dataset_cfg must be a DatasetConfig (e.g. "
                     f"@train/DatasetConfig()), got {train_dataset_cfg!r}")
  check_int(total_steps, "train.total_steps (TRAIN_STEPS)")
  check_int(log_period, "train.log_period")
  check_int(num_microbatches, "train.num_microbatches")
  check_int(seed, "train.seed (SEED)", minimum=0)
  check_dataset(train_dataset_cfg, "train")
  check_int(eval_period, "train.eval_period (EVAL_PERIOD; 0 = no evaluation)", minimum=0)
  if eval_dataset_cfg is not None and eval_period:
    check_int(eval_steps, "train.eval_steps")
    check_dataset(eval_dataset_cfg, "eval")
