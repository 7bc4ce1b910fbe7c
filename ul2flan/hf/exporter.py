"""`export_hf`: a ul2flan checkpoint -> a Hugging Face model dir that transformers loads with
`AutoModelForCausalLM.from_pretrained(dir)` and no custom code.

Writes config.json (the model's family, from `families.hf_config`, keeping the non-architecture
keys of the imported model's config), safetensors (sharded with an index above
`max_shard_bytes`), generation_config.json and the tokenizer files with the sentinel tokens
added. The model's run.json says which vocabulary it was trained with; only Hugging Face
tokenizers (`kind: hf`) can be exported.

The checkpoint and the output may be local or in a bucket (`gs://...`, through `ul2flan.paths`);
the output is staged and published as `output_dir` describes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import jax
import numpy as np

from ul2flan import checkpoints
from ul2flan import config as config_lib
from ul2flan import partitioning
from ul2flan import paths
from ul2flan.hf import families, import_vocabulary, output_dir, safetensors_io
from ul2flan.hf import tokenizer_files, weights
from ul2flan.hf_vocab import token_layout
from ul2flan.model import decoder as decoder_lib
from ul2flan.model.config import DecoderConfig

logger = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16")
GENERATION_CONFIG = "generation_config.json"


def tokenizer_dir_of(info: config_lib.RunInfo, where: str) -> str:
  spec = dict(info.vocabulary)
  path = spec.get("path")
  if spec.get("kind") != "hf" or not path:
    raise ValueError(
        f"{where} was trained with a {spec.get('kind')!r} vocabulary; export-hf writes Hugging "
        f"Face tokenizer files, so it exports models whose vocabulary is a Hugging Face tokenizer "
        f"(kind 'hf': models imported with `ul2flan import-hf` and the stages trained from them)")
  tokenizer_files.check_tokenizer(path)
  return path


def _read_json(path: str) -> dict[str, Any] | None:
  file = paths.resolve(path)
  return json.loads(file.read_text()) if file.exists() else None


def _write_json(path: str, value: dict[str, Any], **options) -> None:
  paths.resolve(path).write_text(json.dumps(value, **options))


def _vocabulary_layout(info: config_lib.RunInfo, tokenizer_dir: str) -> token_layout.TokenLayout:
  """The id layout the model trained with. The tokenizer library reads local files: a tokenizer
  in a bucket is read from a local copy of its files."""
  if not paths.is_url(tokenizer_dir):
    return info.build_vocabulary().layout
  with paths.local_copy(tokenizer_dir, tokenizer_files.TOKENIZER_FILES) as local_dir:
    local = dataclasses.replace(info, vocabulary={**info.vocabulary, "path": local_dir})
    return local.build_vocabulary().layout


def generation_config(hf_config: dict[str, Any], template: dict[str, Any] | None
                      ) -> dict[str, Any]:
  out = dict(template or {"_from_model_config": True})
  for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
    if hf_config.get(key) is not None:
      out.setdefault(key, hf_config[key])
  out.pop("transformers_version", None)
  return out


def hf_tensors(params, cfg: DecoderConfig, dtype: np.dtype,
               layout: token_layout.TokenLayout | None = None
               ) -> list[safetensors_io.TensorToWrite]:
  """The HF tensors of `params`, each converted only when its file is written; the vocabulary
  tensors' rows go back to the tokenizer's id order (`token_layout.tokenizer_embedding`)."""
  flat = {tuple(p.key for p in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  out = []
  for path, tmap in weights.leaves(cfg):
    leaf = flat[path]
    layers = weights.layers_of(path, tmap, cfg)
    shape = leaf.shape[1:] if cfg.scan_layers and tmap.per_layer else leaf.shape
    for position, layer in enumerate(layers):
      def produce(leaf=leaf, tmap=tmap, position=position):
        array = np.asarray(leaf[position] if cfg.scan_layers and tmap.per_layer else leaf)
        array = tmap.to_hf(array)
        if layout is not None and tmap.hf in weights.VOCAB_TENSORS:
          array = token_layout.tokenizer_embedding(array, layout)
        return array.astype(dtype)
      out.append(safetensors_io.TensorToWrite(tmap.hf_name(layer), tmap.hf_shape(shape), dtype,
                                              produce))
  return out


def export_hf(checkpoint: str, out_dir: str, *, dtype: str = "float32",
              max_shard_bytes: int = safetensors_io.DEFAULT_MAX_SHARD_BYTES) -> str:
  """Exports a checkpoint (model dir, checkpoints dir or step dir) to `out_dir`; returns it.

  Exporting the same checkpoint step to the same dir again reuses it; an `out_dir` holding
  anything else is refused. The export also keeps the tokenizer ul2flan trained with (in
  `ul2flan_tokenizer/`) and its vocabulary settings (in `ul2flan.json`), so `import-hf` of the
  export rebuilds the same ids and gives back the same parameters, bit for bit.
  """
  if dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
  out_dir = str(paths.resolve(out_dir))
  ckpt_dir, step = checkpoints.resolve_step_dir(checkpoint)
  model_dir = checkpoints.model_dir_of(checkpoint)
  info = config_lib.read_run_info(model_dir)
  cfg = info.decoder_config
  tokenizer_dir = tokenizer_dir_of(info, model_dir)
  template = _read_json(paths.join(tokenizer_dir, "config.json"))
  hf_config = families.hf_config(cfg, template, dtype)
  layout = _vocabulary_layout(info, tokenizer_dir)
  if layout.vocab_size != cfg.vocab_size:
    raise ValueError(f"{model_dir}: the vocabulary has {layout.vocab_size} ids but the model "
                     f"{cfg.vocab_size} embedding rows; run.json does not describe this model")
  step_dir = paths.join(ckpt_dir, str(step))
  settings = {k: v for k, v in info.vocabulary.items() if k not in ("kind", "path", "extra_ids")}
  marker = {"kind": "export-hf", "source": step_dir, "vocabulary": settings,
            "fingerprint": {"source": step_dir, "step": step, "dtype": dtype}}
  if output_dir.already_written(out_dir, marker["fingerprint"]):
    return out_dir
  # One device: export is a single-process job that streams the params out tensor by tensor.
  partitioner = partitioning.Partitioner({"data": 1}, devices=jax.local_devices()[:1])
  params, _ = checkpoints.restore_params(step_dir, decoder_lib.abstract_params(cfg, partitioner))
  np_dtype = np.dtype(jax.numpy.dtype(dtype))
  with output_dir.staging(out_dir, marker) as tmp:
    files = safetensors_io.write_weights(tmp, hf_tensors(params, cfg, np_dtype, layout),
                                         max_shard_bytes)
    _write_json(paths.join(tmp, "config.json"), hf_config, indent=2, sort_keys=True)
    _write_json(paths.join(tmp, GENERATION_CONFIG), generation_config(
        hf_config, _read_json(paths.join(tokenizer_dir, GENERATION_CONFIG))), indent=2)
    tokenizer_files.copy_files(tokenizer_dir, tmp, tokenizer_files.TOKENIZER_FILES)
    tokenizer_files.copy_files(tokenizer_dir,
                               paths.join(tmp, import_vocabulary.EXPORT_TOKENIZER_DIR),
                               tokenizer_files.TOKENIZER_FILES)
    # Recorded in the marker, which staging writes when this block ends.
    marker["sentinels"] = tokenizer_files.add_sentinels(tmp, layout.sentinel_ids,
                                                        _start_token(layout))
  logger.info("exported %s (step %d) as a %s model to %s (%s)", model_dir, step,
              hf_config["model_type"], out_dir, ", ".join(files))
  return out_dir


START_TOKEN = "<|ul2flan_start|>"


def _start_token(layout: token_layout.TokenLayout) -> dict[int, str]:
  """Without a BOS, ul2flan starts every sequence with a row of its own (a copy of EOS at first),
  which the export puts at the free id F: give it a name a prompt can use."""
  if layout.swap and layout.start_copies is not None:
    return {layout.swap[1]: START_TOKEN}
  return {}
