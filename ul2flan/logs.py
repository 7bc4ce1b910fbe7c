"""The one logging style: stdlib `logging`, a logger per module, configured once by the CLI.

ul2flan's own loggers (`ul2flan.*`) speak at INFO: what each stage starts from, progress, where
results went. Libraries (seqio, orbax, absl, TensorFlow) are held at WARNING, and the few
messages they print on every run that a user can do nothing about are dropped by name (see
`LIBRARY_NOISE`, `NATIVE_NOISE`). `UL2FLAN_VERBOSE=1` shows everything, and tracebacks for
configuration errors.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from typing import Iterator

from absl import logging as absl_logging

FORMAT = "[%(asctime)s %(name)s] %(message)s"

# Library log records (through absl's Python logger) that every run prints and no user can act
# on: (library path fragment, message prefix).
LIBRARY_NOISE = (
    # orbax opening a checkpoint to read it (inference, evaluation, params-only starts).
    ("orbax", "CheckpointManagerOptions.read_only=True, setting"),
    ("orbax", "Given directory is read only"),
    # seqio on tasks built from in-memory or Python sources (the demo tasks, Flan exports).
    ("seqio", "Using an uncached FunctionDataset for training is not recommended"),
    ("seqio", "Features not in `features_length` will be removed during packing"),
)

# Lines that TensorFlow's C++ runtime writes straight to file descriptor 2 when it loads and when
# it looks for GPUs, before TF_CPP_MIN_LOG_LEVEL can apply: INFO lines (the CUDA-driver search
# of a GPU build on a machine without one, CPU feature notes), absl's note that logging is not
# initialised yet, and TensorFlow's failed cuInit. TensorFlow is only the input pipeline and is
# kept off GPUs (`keep_tensorflow_off_accelerators`); JAX initialises CUDA itself and reports its
# own errors. Everything else (warnings, errors) is passed through.
NATIVE_NOISE = (
    re.compile(r"^I\d{4} [\d:.]+\s+\d+ \S+:\d+\] "),
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called"),
    re.compile(r"^To enable the following instructions: .* rebuild TensorFlow"),
    re.compile(r"^E\d{4} [\d:.]+\s+\d+ cuda_platform\.cc:\d+\] failed call to cuInit"),
)


def verbose() -> bool:
  return bool(os.environ.get("UL2FLAN_VERBOSE"))


class _DropLibraryNoise(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.ERROR:
      return True
    message = record.getMessage()
    return not any(lib in record.pathname and message.startswith(prefix)
                   for lib, prefix in LIBRARY_NOISE)


def setup() -> None:
  """Routes every logger to stderr; ul2flan at INFO, everything else at WARNING (INFO if verbose)."""
  # force: replaces whatever handler an imported library put on the root logger (one line each).
  logging.basicConfig(level=logging.INFO if verbose() else logging.WARNING, format=FORMAT,
                      datefmt="%H:%M:%S", stream=sys.stderr, force=True)
  if not verbose():
    for handler in logging.getLogger().handlers:
      handler.addFilter(_DropLibraryNoise())
  logging.getLogger("ul2flan").setLevel(logging.INFO)
  absl_logging.set_verbosity(absl_logging.INFO if verbose() else absl_logging.WARNING)


@contextlib.contextmanager
def native_noise_filtered() -> Iterator[None]:
  """Inside, file descriptor 2 goes to a temporary file; on leaving, its lines come back to
  stderr less those matching `NATIVE_NOISE`. Does nothing when verbose."""
  if verbose():
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      lines = captured.read().decode(errors="replace").splitlines(keepends=True)
      sys.stderr.write("".join(l for l in lines if not any(p.match(l) for p in NATIVE_NOISE)))
      sys.stderr.flush()


def keep_tensorflow_off_accelerators(tf) -> None:
  """TensorFlow only runs the input pipeline: it must not claim GPU memory JAX needs (t5x does
  the same). A no-op when TensorFlow's runtime is already initialised (e.g. inside tests)."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    pass
