"""The feature converter that upstream t5x names to train on the ul2flan tasks.

t5x's `models.DecoderOnlyModel` turns task examples into model features with its
`FEATURE_CONVERTER_CLS`, by default `seqio.DecoderFeatureConverter`: an {"inputs", "targets"}
task goes to seqio's stock `PrefixLMFeatureConverter`, which checks each feature against its own
length. UL2R examples are sized so that inputs + targets fill one decoder row (`fill_rows`): an R
example at 128 + 128 has ~210 inputs tokens and ~46 targets tokens, so that check stops training
at the first batch. A t5x run names this converter instead (README, "Using the tasks from
upstream t5x"):

    models.DecoderOnlyModel.feature_converter_cls = @ul2flan_tasks.FullRowDecoderFeatureConverter

It is `seqio.DecoderFeatureConverter` (the same constructor arguments, the same causal-LM path for
a targets-only task) whose prefix-LM path is ul2flan's own trainer's converter
(`ul2flan.row_layout.PrefixLMFeatureConverter`): an example passes when its inputs and targets
together fit the row of I + T tokens, and one longer than the row is an error, never cut.
"""

from __future__ import annotations

import gin
import seqio

from ul2flan import row_layout

GIN_NAME = "FullRowDecoderFeatureConverter"
GIN_MODULE = "ul2flan_tasks"


class FullRowDecoderFeatureConverter(seqio.DecoderFeatureConverter):
  """`seqio.DecoderFeatureConverter` with ul2flan's full-row check on the prefix-LM path.

  Accepts what t5x passes (`pack`, `use_custom_packing_ops`; `pack=False` for inference) and
  every other argument of `seqio.DecoderFeatureConverter`. The per-feature `apply_length_check`
  still applies to targets-only (causal LM) tasks; prefix-LM rows are checked whole.
  """

  def __init__(self, loss_on_targets_only: bool = True, **kwargs):
    super().__init__(loss_on_targets_only=loss_on_targets_only, **kwargs)
    if not hasattr(self, "prefixlm_feature_converter"):
      # seqio routes {"inputs", "targets"} through this attribute; fail here, not with a
      # per-feature length error at the first batch, if a seqio release renames it.
      raise TypeError(f"this seqio {seqio.__version__} DecoderFeatureConverter has no "
                      f"prefixlm_feature_converter; {GIN_NAME} needs updating")
    self.prefixlm_feature_converter = row_layout.PrefixLMFeatureConverter(
        loss_on_targets_only=loss_on_targets_only, **kwargs)


def _register_with_gin() -> None:
  """Makes `@ul2flan_tasks.FullRowDecoderFeatureConverter` resolve in gin, in both of gin's
  modes: by registered name, and (under `dynamic_registration`, as t5x's gin files use) as the
  attribute of the imported `ul2flan_tasks` module, which is this same class."""
  # A process that locked gin before importing this (t5x does so before importing
  # MIXTURE_OR_TASK_MODULE) still gets the name: registering one binds no parameter.
  with gin.unlock_config():
    gin.external_configurable(FullRowDecoderFeatureConverter, name=GIN_NAME, module=GIN_MODULE)


_register_with_gin()
