"""`ul2flan train --help` / `pipeline --help` list what they claim: every macro the run files bind,
every configurable the command reads with the parameters gin may bind, and nothing it refuses.

The reference is gin itself: the registry after every configurable module is imported, and the
macros gin holds after parsing base.gin.
"""

import inspect
import os
import re
import subprocess
import sys

import gin

from ul2flan import config
from ul2flan.commands import main as cli

REGISTRY = gin.config._REGISTRY  # pylint: disable=protected-access
PIPELINE_ONLY = {"run_pipeline", "evaluation_settings", "hf_import_settings", "hf_export_settings"}


def _help(command: str) -> str:
  parser = cli.build_parser()
  sub = next(a for a in parser._actions if a.dest == "command")  # pylint: disable=protected-access
  return sub.choices[command].format_help()


def _configurables():
  """{short name: parameters gin may bind} of every registered ul2flan configurable."""
  out = {}
  for selector in REGISTRY._selector_map:  # pylint: disable=protected-access
    c = REGISTRY[selector]
    if not selector.startswith("ul2flan."):
      continue
    params = inspect.signature(c.wrapped).parameters.values()
    out[c.name] = {p.name for p in params
                   if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self"
                   and p.name not in (c.denylist or ())
                   and (not c.allowlist or p.name in c.allowlist)}
  return out


def _listed(text: str) -> dict[str, set[str]]:
  listed = {}
  for m in re.finditer(r"^  (\w+)\((.*)\)$", text, re.MULTILINE):
    params = m.group(2)
    while re.search(r"\([^()]*\)", params):  # drop nested defaults, e.g. FewShotConfig(max_shots=5)
      params = re.sub(r"\([^()]*\)", "", params)
    listed[m.group(1)] = set(re.findall(r"(?:^|, )(\w+)=", params))
  return listed


def test_train_help_lists_every_macro_and_configurable_it_reads():
  text = _help("train")
  config.parse_gin(["gin_configs/runs/base.gin"])
  try:
    macros = {scope for scope, selector in gin.config._CONFIG if selector == "gin.macro"}  # pylint: disable=protected-access
  finally:
    config.parse_gin([])
  section = text.split("Macros")[1].split("Configurables")[0]
  assert macros and macros == set(re.findall(r"^  ([A-Z_]+) = ", section, re.MULTILINE))
  expected = {k: v for k, v in _configurables().items() if k not in PIPELINE_ONLY}
  listed = _listed(text)
  assert listed.keys() == expected.keys()
  for name, params in expected.items():
    assert listed[name] == params, name
  assert "model_dir=" not in text.split("Configurables")[1]  # denylisted: `--model_dir`, never a gin binding
  assert "make_schedule(" in text and "total_steps=" not in text.split("make_schedule(")[1].split(")")[0]


def test_pipeline_help_lists_only_what_the_pipeline_reads():
  listed = _listed(_help("pipeline"))
  expected = {k: v for k, v in _configurables().items() if k in PIPELINE_ONLY}
  assert listed == expected


def test_the_command_line_imports_neither_torch_nor_transformers():
  """torch and transformers are test-only (README): a fresh interpreter that loads every command
  has neither, although both are installed here (tensorboardX used to pull torch into every
  process, 1.5-4 s of each start)."""
  code = ("import sys; import ul2flan.commands.main; "
          "print(sorted({'torch', 'transformers'} & set(sys.modules)))")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                     cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.strip().splitlines()[-1] == "[]"
