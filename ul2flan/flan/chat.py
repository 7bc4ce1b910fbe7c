"""The chat-template switch: Flan examples wrapped in the tokenizer's chat template.

Off by default (the demo and SentencePiece vocabularies have no chat template); `"auto"` (the
Hugging Face pipeline's setting) switches it on exactly when the tokenizer has a chat template, so
an instruct model is fine-tuned in the format it was tuned in and a base model without a template
keeps plain rows. When on, every Flan task (formatted, pre-formatted and Flan-export tasks alike:
they all go through `sources.add_task`) renders each example as one exchange of the vocabulary's
chat template (`ul2flan.hf_vocab.chat_template`): `inputs` becomes the user turn followed by the
assistant header (`add_generation_prompt=True`), `targets` the assistant's text and the end of
turn. The loss stays on `targets` only: the prefix-LM feature converters weight the targets.

If the reply ends with the EOS token's text (ChatML templates with `eos_token: <|im_end|>`), that
ending is left out: the `targets` feature appends EOS itself. The switch is read when a dataset is
built, so a gin binding made after the tasks were registered holds.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import gin
import numpy as np
import seqio
import tensorflow as tf

from ul2flan import vocabularies


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ChatFormat:
  """Whether Flan examples are wrapped in the tokenizer's chat template, and with what system turn."""
  enabled: bool | str = False   # True, False or "auto": on iff the vocabulary has a template
  system_prompt: str | None = None

  def __post_init__(self):
    if self.enabled not in (True, False, "auto"):
      raise ValueError(f"ChatFormat.enabled = {self.enabled!r}: use True, False or \"auto\" (on "
                       "when the tokenizer has a chat template)")

  def active(self, vocabulary: seqio.Vocabulary) -> bool:
    """Whether rows for `vocabulary` are chat exchanges under this setting."""
    if self.enabled == "auto":
      return getattr(vocabularies.resolve(vocabulary), "chat_template", None) is not None
    return bool(self.enabled)


def chat_exchange(vocabulary: seqio.Vocabulary, inputs: str, targets: str,
                  system_prompt: str | None = None) -> tuple[str, str]:
  """(inputs, targets) as the chat template's user turn + assistant header, and reply."""
  vocabulary = vocabularies.resolve(vocabulary)
  template = getattr(vocabulary, "chat_template", None)
  if template is None:
    where = getattr(getattr(vocabulary, "files", None), "tokenizer_path", None) or repr(vocabulary)
    raise ValueError(
        f"ChatFormat.enabled is set but the vocabulary ({where}) has no chat template: a Hugging "
        "Face tokenizer needs `chat_template` in tokenizer_config.json or a chat_template.jinja "
        "beside tokenizer.json. Add one, or set ChatFormat.enabled = False.")
  prompt, reply = template.exchange(inputs, targets, system_prompt)
  eos_text = template.special_tokens.get("eos_token")
  if eos_text and reply.rstrip().endswith(eos_text):
    reply = reply.rstrip()[:-len(eos_text)]
  return prompt, reply


def chat_prompt(vocabulary: seqio.Vocabulary, inputs: str,
                settings: ChatFormat | None = None) -> str:
  """What a model trained with the switch on should be prompted with at inference."""
  settings = settings or ChatFormat()
  if not settings.active(vocabulary):
    return inputs
  return chat_exchange(vocabulary, inputs, "", settings.system_prompt)[0]


def apply_chat_template(dataset: tf.data.Dataset,
                        output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
  """seqio preprocessor (before `tokenize`): wraps `inputs` / `targets` text when switched on."""
  settings = ChatFormat()
  vocabulary = output_features["targets"].vocabulary
  if not settings.active(vocabulary):
    return dataset
  chat_exchange(vocabulary, "", "", settings.system_prompt)  # fail now, not inside tf.data

  def wrap(inputs: bytes, targets: bytes) -> tuple[np.ndarray, np.ndarray]:
    prompt, reply = chat_exchange(vocabulary, inputs.decode("utf-8"), targets.decode("utf-8"),
                                  settings.system_prompt)
    return np.array(prompt.encode("utf-8"), object), np.array(reply.encode("utf-8"), object)

  def wrap_example(ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    inputs, targets = tf.numpy_function(wrap, [ex["inputs"], ex["targets"]],
                                        (tf.string, tf.string), stateful=False)
    inputs.set_shape([])
    targets.set_shape([])
    return {**ex, "inputs": inputs, "targets": targets}

  return dataset.map(wrap_example, num_parallel_calls=tf.data.AUTOTUNE)
