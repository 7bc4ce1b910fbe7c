"""A run's row layout: the one owner of how a training row and a prompt are laid out.

These decisions make a layout, and every consumer (the input pipeline, the trainer's padding
rows, the train step's loss weights, the model's attention mask, the generator's prompts) asks a
`RowLayout` instead of deciding for itself:

* `kind`, the seqio feature converter and the attention it implies:
  - "lm": a causal LM over `targets` (pre-training);
  - "prefix_lm": `inputs EOS targets` in one row, the inputs attended bidirectionally, loss on
    the targets only (UL2R, and Flan from a U-model);
  - "prefix_lm_causal": the same rows with causal attention (Flan straight from a causal base, as
    Flan-PaLM was). A prompt of either prefix layout ends with the EOS the answer follows.
* `hidden_start`, how a row starts. seqio's decoder rows are the tokens shifted right behind a
  start slot holding id 0. A model pre-trained with a BOS sees that BOS there (a Hugging Face
  tokenizer's BOS is swapped into id 0; T5-style vocabularies use 0 as BOS). A model pre-trained
  without one (its tokenizer adds none: SmolLM2, Qwen) must not see anything there: the slot is
  hidden from every other position's attention, and nothing is predicted from it (no loss on a
  segment's first token). Positions are relative (RoPE), so the row's text is then computed
  exactly as the original model computes it from position 0.
* `inputs_eos`, prefix layouts only: whether the inputs end with EOS (`inputs EOS targets`, the
  recipe's and seqio's rows) or the targets follow the inputs directly (a UL2R run with
  `ul2r_preset.inputs_eos = False`). The run records what its task's rows did (run.json).
* `mode_ids`, prompts only: what a prompt begins with after the start slot. Empty, except for a
  U-model read as it was trained (`with_mode_ids`: its S denoiser's mode token, `[S2S]`); its
  training rows got theirs from the denoisers.

The layout is derived, never stored twice: `kind` is the run's FEATURE_CONVERTER,
`hidden_start` comes from the vocabulary (`vocabularies.adds_start_token`), `inputs_eos` from the
task's rows (`ul2flan.training.data.inputs_end_with_eos`) and `mode_ids` from the trained S
denoiser (`ul2flan.ul2.trained`).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import seqio
import tensorflow as tf

from ul2flan import vocabularies

LM, PREFIX_LM, PREFIX_LM_CAUSAL = "lm", "prefix_lm", "prefix_lm_causal"
START_SLOT_ID = vocabularies.PAD_ID  # seqio's decoder BOS: targets shifted right behind a 0


class PrefixLMFeatureConverter(seqio.PrefixLMFeatureConverter):
  """seqio's prefix LM (inputs + targets concatenated, then packed), checked per decoder row.

  `task_feature_lengths` {"inputs": I, "targets": T} means rows of I + T tokens. seqio's check
  wants each feature within its own length; here an example passes when its inputs and targets
  together fit the row, as UL2 examples sized with `fill_rows` do (an R example at 1024 + 1024
  has ~1680 inputs and ~370 targets tokens). An example longer than the row is an error, never
  silently cut.
  """

  def __init__(self, *args, **kwargs):
    kwargs["apply_length_check"] = False  # seqio's per-feature check; the row is checked below
    super().__init__(*args, **kwargs)

  def _convert_features(self, ds, task_feature_lengths):
    row = sum(task_feature_lengths.values())

    def check_row(ex):
      length = tf.size(ex["inputs"]) + tf.size(ex["targets"])
      fits = tf.debugging.assert_less_equal(
          length, row, message=f"an example's inputs + targets exceed the {row}-token row of "
                               f"task_feature_lengths {dict(task_feature_lengths)}")
      with tf.control_dependencies([fits]):
        return {k: tf.identity(v) for k, v in ex.items()}

    ds = ds.map(check_row, num_parallel_calls=tf.data.AUTOTUNE)
    return super()._convert_features(ds, task_feature_lengths)


class CausalPrefixLMFeatureConverter(PrefixLMFeatureConverter):
  """PrefixLM rows (inputs + targets concatenated, loss on targets only) with causal attention.

  For instruction-tuning a model that stays a causal LM (Flan-PaLM from PaLM, as opposed to
  Flan-U-PaLM, which keeps UL2R's bidirectional prefix).
  """
  MODEL_FEATURES = {k: v for k, v in seqio.PrefixLMFeatureConverter.MODEL_FEATURES.items()
                    if k != "decoder_causal_attention"}

  def _convert_features(self, ds, task_feature_lengths):
    ds = super()._convert_features(ds, task_feature_lengths)
    return ds.map(lambda ex: {k: v for k, v in ex.items() if k != "decoder_causal_attention"},
                  num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths):
    lengths = super().get_model_feature_lengths(task_feature_lengths)
    lengths.pop("decoder_causal_attention", None)
    return lengths


FEATURE_CONVERTERS = {
    LM: seqio.DecoderFeatureConverter,
    PREFIX_LM: PrefixLMFeatureConverter,
    PREFIX_LM_CAUSAL: CausalPrefixLMFeatureConverter,
}
KINDS = tuple(FEATURE_CONVERTERS)


@dataclasses.dataclass(frozen=True)
class RowLayout:
  """How rows and prompts are laid out for one model (see the module docstring)."""
  kind: str = LM
  hidden_start: bool = False
  inputs_eos: bool = True  # prefix layouts: `inputs EOS targets` (False: `inputs targets`)
  # Prompts only: ids a prompt begins with, after the start slot. A U-model read as trained gets
  # its S denoiser's mode token here (`with_mode_ids`), as every input it trained on began with one.
  mode_ids: tuple[int, ...] = ()

  def __post_init__(self):
    if self.kind not in FEATURE_CONVERTERS:
      raise ValueError(f"feature_converter (FEATURE_CONVERTER) must be one of {list(KINDS)}, got "
                       f"{self.kind!r}")

  @classmethod
  def of(cls, kind: str, vocabulary: seqio.Vocabulary, inputs_eos: bool = True) -> "RowLayout":
    """The layout of a run with this feature converter over this vocabulary."""
    return cls(kind, hidden_start=not vocabularies.adds_start_token(vocabulary),
               inputs_eos=inputs_eos)

  # ---- training rows ----------------------------------------------------------------------------
  @property
  def task_features(self) -> tuple[str, ...]:
    """The task features the converter reads ("targets", or "inputs" and "targets")."""
    return tuple(sorted(FEATURE_CONVERTERS[self.kind].TASK_FEATURES))

  def feature_converter(self, pack: bool = True) -> seqio.FeatureConverter:
    return FEATURE_CONVERTERS[self.kind](pack=pack)

  def model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict[str, int]:
    return dict(self.feature_converter().get_model_feature_lengths(dict(task_feature_lengths)))

  # ---- attention and loss -----------------------------------------------------------------------
  @property
  def bidirectional_inputs(self) -> bool:
    """Whether the inputs (prompt) are attended bidirectionally: a prefix LM."""
    return self.kind == PREFIX_LM

  def as_causal_lm(self) -> "RowLayout":
    """The layout of the causal LM a U- or Flan model was pre-trained as: causal attention, no
    EOS after the prompt, the same start. Reads the same weights apart from their new layout."""
    return dataclasses.replace(self, kind=LM, mode_ids=())

  def with_mode_ids(self, ids: Sequence[int]) -> "RowLayout":
    """This layout with prompts that begin with `ids` (a UL2 denoiser's mode token)."""
    return dataclasses.replace(self, mode_ids=tuple(int(i) for i in ids))

  def with_bidirectional_inputs(self, bidirectional: bool) -> "RowLayout":
    """This layout with its prompt attended bidirectionally or causally (`ul2flan infer
    --[no-]prefix_lm`). A model trained to answer after its inputs' EOS keeps that EOS."""
    if bidirectional:
      kind = PREFIX_LM
    else:
      kind = LM if self.kind == LM else PREFIX_LM_CAUSAL
    return dataclasses.replace(self, kind=kind)

  # ---- prompts ----------------------------------------------------------------------------------
  @property
  def prompt_ends_with_eos(self) -> bool:
    """Trained as `inputs EOS targets`: the answer follows that EOS, so a prompt ends with it.
    A causal LM's prompt must not, nor one of a prefix layout without it (`inputs_eos`)."""
    return self.kind in (PREFIX_LM, PREFIX_LM_CAUSAL) and self.inputs_eos

  def prompt(self, ids: Sequence[int], eos_id: int, ends_with_eos: bool | None = None
             ) -> list[int]:
    """A prompt as the model saw its rows begin: the start slot, the mode ids if any, the ids,
    and the EOS that ends the inputs for the prefix layouts (`ends_with_eos` overrides, e.g. to
    continue an input)."""
    eos = self.prompt_ends_with_eos if ends_with_eos is None else ends_with_eos
    return [START_SLOT_ID, *self.mode_ids, *ids] + ([eos_id] if eos else [])

  def inputs_length(self, num_ids: int) -> int:
    """A prompt of `num_ids` text ids measured as the training inputs were: mode ids, the ids,
    the inputs' EOS (not seqio's start slot), what a trained inputs length bounds."""
    return len(self.mode_ids) + num_ids + (1 if self.prompt_ends_with_eos else 0)
