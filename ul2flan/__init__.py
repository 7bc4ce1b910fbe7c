"""ul2flan: UL2R continued training and Flan instruction finetuning on a t5x-style JAX trainer."""

import os

# TensorFlow is only the data pipeline here: its C++ INFO and WARNING lines stay quiet (set before
# anything imports it), unless UL2FLAN_VERBOSE=1 asks for everything.
if not os.environ.get("UL2FLAN_VERBOSE"):
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
