"""The one logging style: stdlib `logging`, a logger per module, configured once by the CLI.

ul2flan's own loggers (`ul2flan.*`) speak at INFO: what each stage starts from, progress, where
results went. Libraries (seqio, orbax, absl, TensorFlow) are held at WARNING unless
`UL2FLAN_VERBOSE=1`, which also shows tracebacks for configuration errors.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import logging as absl_logging

FORMAT = "[%(asctime)s %(name)s] %(message)s"


def verbose() -> bool:
  return bool(os.environ.get("UL2FLAN_VERBOSE"))


def setup() -> None:
  """Routes every logger to stderr; ul2flan at INFO, everything else at WARNING (INFO if verbose)."""
  # force: replaces whatever handler an imported library put on the root logger (one line each).
  logging.basicConfig(level=logging.INFO if verbose() else logging.WARNING, format=FORMAT,
                      datefmt="%H:%M:%S", stream=sys.stderr, force=True)
  logging.getLogger("ul2flan").setLevel(logging.INFO)
  absl_logging.set_verbosity(absl_logging.INFO if verbose() else absl_logging.WARNING)
