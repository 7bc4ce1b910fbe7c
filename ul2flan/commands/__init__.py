"""The `ul2flan` command line: one module per subcommand.

Every entry into the command line (`ul2flan ...`, `python -m ul2flan ...`) passes here first, so
TensorFlow and JAX are loaded here: with the native startup lines nobody can act on filtered out
(`ul2flan.logs.NATIVE_NOISE`; all of them show with UL2FLAN_VERBOSE=1), and TensorFlow kept off
the GPUs that JAX uses.
"""

from ul2flan import logs

with logs.native_noise_filtered():
  import jax  # noqa: F401  pylint: disable=unused-import
  import tensorflow as tf
  logs.keep_tensorflow_off_accelerators(tf)
