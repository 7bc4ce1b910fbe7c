"""A tokenizer's chat template, rendered the way transformers' `apply_chat_template` renders it.

transformers renders `chat_template` (from `tokenizer_config.json`, or `chat_template.jinja`
beside it) with jinja2 in a sandbox with `trim_blocks` and `lstrip_blocks`, the `loopcontrols`
extension, a `tojson` filter that keeps non-ASCII text, `raise_exception` and `strftime_now`, and
the tokenizer's special tokens (`bos_token`, `eos_token`, ...) as variables. ul2flan renders the
same template the same way without importing transformers (tests compare the two).

One instruction example becomes one exchange: the prompt is the user turn rendered with
`add_generation_prompt=True`; the reply is what the full conversation (user + assistant) adds to
it: the assistant's text and the template's end of turn.
"""

from __future__ import annotations

import datetime
import json
from typing import Any, Mapping, Sequence

import jinja2
import jinja2.ext
import jinja2.sandbox


class ChatTemplateError(ValueError):
  """A chat template that cannot render an exchange as prompt + reply."""


def _raise_exception(message: str):
  raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Sequence[str] | None = None, sort_keys: bool = False) -> str:
  return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                    sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
  return datetime.datetime.now().strftime(fmt)


def _environment() -> jinja2.sandbox.ImmutableSandboxedEnvironment:
  env = jinja2.sandbox.ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = _raise_exception
  env.globals["strftime_now"] = _strftime_now
  return env


def select_template(value: Any, origin: str) -> str:
  """The template text of a `chat_template` entry (a string, or a list of named templates)."""
  if isinstance(value, str):
    return value
  if isinstance(value, list):
    named = {t.get("name"): t.get("template") for t in value if isinstance(t, Mapping)}
    if isinstance(named.get("default"), str):
      return named["default"]
    raise ChatTemplateError(f"{origin}: chat_template lists templates {sorted(map(str, named))} "
                            "but none is named 'default'")
  raise ChatTemplateError(f"{origin}: chat_template must be a string, got {type(value).__name__}")


class ChatTemplate:
  """One compiled chat template and the special-token variables it is rendered with."""

  def __init__(self, source: str, special_tokens: Mapping[str, str], origin: str):
    self.source = source
    self.origin = origin
    self.special_tokens = dict(special_tokens)
    try:
      self._template = _environment().from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
      raise ChatTemplateError(f"{origin}: the chat template does not parse (line {e.lineno}: "
                              f"{e.message})") from None

  def render(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool) -> str:
    try:
      return self._template.render(messages=list(messages), tools=None, documents=None,
                                   add_generation_prompt=add_generation_prompt,
                                   **self.special_tokens)
    except jinja2.exceptions.TemplateError as e:
      raise ChatTemplateError(f"{self.origin}: the chat template failed: {e}") from None

  def exchange(self, user: str, assistant: str, system: str | None = None) -> tuple[str, str]:
    """(prompt, reply): the user turn up to the assistant's header, then the assistant turn."""
    head = [{"role": "system", "content": system}] if system else []
    user_turn = head + [{"role": "user", "content": user}]
    prompt = self.render(user_turn, add_generation_prompt=True)
    full = self.render(user_turn + [{"role": "assistant", "content": assistant}],
                       add_generation_prompt=False)
    if not full.startswith(prompt):
      raise ChatTemplateError(
          f"{self.origin}: the chat template renders a conversation that does not start with its "
          "own generation prompt, so the reply cannot be separated from the prompt (the loss is "
          "on the reply only). Use a template whose add_generation_prompt output is a prefix of "
          "the conversation with the assistant turn.")
    return prompt, full[len(prompt):]
