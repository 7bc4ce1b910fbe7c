"""The S denoiser a model was trained with, read back from the gin bindings its trainer saved.

A U-model's every training row began with a mode token; to read it as trained, a prompt begins
with the S denoiser's (`[S2S]` unless the run bound other `mode_tokens`), and where the run laid
S out with sentinel 0 (`s_sentinel`), its answer follows that sentinel. The pipeline's benchmark
reading and the demo's probes ask here instead of assuming the preset's defaults.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect

from ul2flan import config as config_lib
from ul2flan.ul2 import denoisers
from ul2flan.ul2 import infilling

PRESET_NAMES = ("ul2r_preset", "ul2_preset")  # their third mode token is S's


@dataclasses.dataclass(frozen=True)
class SReading:
  mode_token: str  # what every S input began with ("" for none)
  sentinel: bool  # S targets begin with sentinel 0


def _default(preset, name):
  return inspect.signature(preset).parameters[name].default


# The UL2R preset's own S denoiser: how a prefix LM is read when its run saved no preset bindings
# (a Flan-U model: its Flan run bound none, its U ancestor the preset's defaults).
PRESET_S_READING = SReading(mode_token=infilling.mode_token("S"), sentinel=False)


def trained_s_reading(model_dir: str) -> SReading | None:
  """The S denoiser of the UL2 preset the model in `model_dir` was trained on; None for a model
  trained on no preset, or not trained here (an import: no saved bindings)."""
  text = config_lib.trained_bindings(model_dir)
  if text is None:
    return None
  for name in PRESET_NAMES:
    tokens, sentinel = (config_lib.bound_value(text, f"{name}.{k}")
                        for k in ("mode_tokens", "s_sentinel"))
    if tokens is None and sentinel is None:
      continue
    preset = denoisers.PRESETS["UL2R" if name == "ul2r_preset" else "UL2"]
    mode_tokens = ast.literal_eval(tokens) if tokens else _default(preset, "mode_tokens")
    return SReading(mode_token=mode_tokens[2], sentinel=sentinel == "True")
  return None
