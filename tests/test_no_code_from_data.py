"""Nothing in ul2flan loads pickles or runs code taken from data, checkpoints or configs (gin
files excepted): a static scan of the package's source for the loaders that can execute code.

Data and checkpoints are read as JSON, CSV, safetensors (header parsed by hand), orbax
(tensorstore + JSON metadata), tf.data iterator states (TF checkpoints restored into a pipeline
built here) and tokenizer.json; chat templates render in jinja2's sandbox; Flan templates accept
bare field names only (`flan.templates.placeholder_fields`). Task modules are imported by the name
a gin config or `--module` gives, never by one read from a checkpoint's run.json.
"""

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent
SOURCES = ("ul2flan", "tasks")  # tasks/ installs as ul2flan_tasks
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve",
                  "joblib"}
UNSAFE_CALLS = {"eval", "exec", "compile", "__import__"}
UNSAFE_ATTRIBUTES = {  # (object name, attribute): loaders that can run code from a file
    ("torch", "load"), ("yaml", "load"), ("yaml", "unsafe_load"), ("yaml", "full_load"),
    ("pd", "read_pickle"), ("pandas", "read_pickle"), ("keras", "load_model"),
}


def _findings(path: pathlib.Path) -> list[str]:
  tree = ast.parse(path.read_text(), str(path))
  found = []
  for node in ast.walk(tree):
    where = f"{path.name}:{getattr(node, 'lineno', '?')}"
    if isinstance(node, ast.Import):
      found += [f"{where} imports {a.name}" for a in node.names
                if a.name.split(".")[0] in UNSAFE_MODULES]
    elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
      found.append(f"{where} imports from {node.module}")
    elif isinstance(node, ast.Call):
      func = node.func
      if isinstance(func, ast.Name) and func.id in UNSAFE_CALLS:
        found.append(f"{where} calls {func.id}()")
      if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and (
          (func.value.id, func.attr) in UNSAFE_ATTRIBUTES):
        found.append(f"{where} calls {func.value.id}.{func.attr}()")
      for kw in node.keywords:  # np.load(..., allow_pickle=True), from_pretrained(trust_remote_code)
        if kw.arg in ("allow_pickle", "trust_remote_code") and not (
            isinstance(kw.value, ast.Constant) and kw.value.value is False):
          found.append(f"{where} passes {kw.arg}={ast.unparse(kw.value)}")
  return found


def test_the_scan_catches_each_unsafe_loader(tmp_path):
  """The scanner itself, on a file that uses every kind it must catch."""
  sample = tmp_path / "sample.py"
  sample.write_text("import pickle\nfrom dill import loads\nimport numpy as np\nimport yaml\n"
                    "eval('1')\nexec('x = 1')\nnp.load('a.npy', allow_pickle=True)\n"
                    "yaml.load(open('c'))\nnp.load('b.npy', allow_pickle=False)\n")
  found = _findings(sample)
  assert sorted(f.split(" ", 1)[1] for f in found) == sorted([
      "imports pickle", "imports from dill", "calls eval()", "calls exec()",
      "passes allow_pickle=True", "calls yaml.load()"]), found


def test_no_code_or_pickle_loading_from_data():
  files = sorted(p for d in SOURCES for p in (REPO / d).rglob("*.py"))
  assert len(files) > 50  # the whole package, not an empty glob
  found = [f for path in files for f in _findings(path)]
  assert not found, found
