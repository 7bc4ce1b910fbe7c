"""`import_hf`: a Hugging Face model dir -> a ul2flan model dir.

The output is what the rest of ul2flan already reads: `checkpoints/0/params` (orbax; a valid
INITIAL_CHECKPOINT_PATH), `run.json`, `model.gin` (the DecoderConfig and vocabulary bindings) and
`tokenizer/` (the tokenizer files, plus config.json / generation_config.json that export uses
as templates). Everything is checked before anything is written (model_type and features, every
tensor's presence and shape), and the dir appears all at once (`output_dir.staging`).

Both dirs may be local or in a bucket (`gs://...`, through `ul2flan.paths`): the weights are
streamed from the bucket tensor by tensor, the tokenizer is read from a local copy of its files,
and the output is staged and published as `output_dir` describes.

One process converts every HF tensor straight into its place in a NumPy array (resident memory:
the model plus one tensor). Several processes (multi-host) build sharded jax arrays with
`jax.make_array_from_callback`: each reads, converts and keeps only its devices' slices.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from ul2flan import checkpoints
from ul2flan import config as config_lib
from ul2flan import partitioning
from ul2flan import paths
from ul2flan import vocabularies
from ul2flan.hf import families, import_vocabulary, output_dir, safetensors_io
from ul2flan.hf import tokenizer_files, weights
from ul2flan.hf_vocab import token_layout
from ul2flan.model import decoder as decoder_lib
from ul2flan.model.config import DecoderConfig

logger = logging.getLogger(__name__)

MODEL_GIN = "model.gin"
TOKENIZER_DIR = "tokenizer"
CONFIG_FILE = "config.json"
DTYPES = ("float32", "bfloat16")
SAVE_CHUNK_BYTES = 64 * 1024 ** 2
MAX_CHUNK_SPLIT = 64  # chunks per SAVE_CHUNK_BYTES of array beyond which one chunk is written


def read_hf_config(hf_dir: str) -> dict[str, Any]:
  directory = paths.resolve(hf_dir)
  path = directory / CONFIG_FILE
  if not directory.is_dir():
    raise FileNotFoundError(f"{hf_dir} is not a directory (expected a Hugging Face model dir)")
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: {hf_dir} is not a Hugging Face model dir")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e})") from None


def is_hf_model_dir(path: str) -> bool:
  """A Hugging Face model dir (config.json + safetensors), as opposed to a ul2flan checkpoint."""
  directory = paths.resolve(path)
  return ((directory / CONFIG_FILE).exists() and
          ((directory / safetensors_io.SINGLE_FILE).exists() or
           (directory / safetensors_io.INDEX_FILE).exists()))


def decoder_config(hf_dir: str, dtype: str = "float32", scan_layers: bool = False,
                   vocab_size: int | None = None) -> DecoderConfig:
  """The DecoderConfig of `hf_dir`'s config.json; `vocab_size` (the layout's rows) overrides its
  vocab_size."""
  if dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
  fields = families.decoder_fields(read_hf_config(hf_dir), paths.join(hf_dir, CONFIG_FILE))
  if vocab_size is not None:
    fields["vocab_size"] = vocab_size
  return DecoderConfig(**fields, dtype=dtype, scan_layers=scan_layers)


class Source:
  """The HF tensors, the vocabulary ones (embedding, lm_head) with their rows in the model's id
  order (`token_layout.model_embedding`: BOS and id 0 swapped, sentinel rows added)."""

  def __init__(self, reader: safetensors_io.WeightsReader, hf_rows: int,
               layout: token_layout.TokenLayout | None = None, reinit: bool = False):
    self.reader, self.hf_rows, self.layout, self.reinit = reader, hf_rows, layout, reinit

  def read(self, name: str) -> np.ndarray:
    array = self.reader.read(name)
    if self.layout is not None and name in weights.VOCAB_TENSORS:
      array = token_layout.model_embedding(array, self.layout, reinit=self.reinit)
    return array

  def read_into(self, tmap: weights.TensorMap, name: str, dest: np.ndarray) -> None:
    if self.layout is not None and name in weights.VOCAB_TENSORS:
      if tmap.kind == "copy":
        self._vocab_rows_into(name, dest)
      else:  # the untied output projection, [d, vocab]: its rows are dest's columns
        rows = np.empty(dest.shape[::-1], dest.dtype)
        self._vocab_rows_into(name, rows)
        dest[...] = rows.T
    elif tmap.kind == "copy" and self.reader.tensors[name].dtype == dest.dtype:
      self.reader.read(name, out=dest)  # no transform: straight into place
    else:
      tmap.fill(dest, self.read(name))

  def _vocab_rows_into(self, name: str, dest: np.ndarray) -> None:
    """`token_layout.model_embedding` written into `dest` without its whole-matrix temporaries
    (the row mean is accumulated in blocks): the same values, a third of the memory."""
    layout, info = self.layout, self.reader.tensors[name]
    rows = info.shape[0]
    if info.dtype == dest.dtype:
      self.reader.read(name, out=dest[:rows])
      source = dest
    else:  # the mean is taken in the checkpoint's dtype, as model_embedding does
      source = np.zeros(dest.shape, info.dtype)
      self.reader.read(name, out=source[:rows])
    source[rows:] = 0
    start = None if layout.start_copies is None else source[layout.start_copies].copy()
    if layout.swap:
      a, b = layout.swap
      source[[a, b]] = source[[b, a]]
    if start is not None:
      source[0] = start
    if self.reinit and layout.untrained_ids:
      trained = np.ones(layout.vocab_size, bool)
      trained[list(layout.untrained_ids)] = False
      if start is not None:
        trained[0] = False  # a copy of the EOS row: counted once
      total = np.zeros(source.shape[1:], np.float64)
      for begin in range(0, layout.vocab_size, 8192):
        block = source[begin:begin + 8192][trained[begin:begin + 8192]]
        total += block.astype(np.float64).sum(axis=0)
      source[list(layout.untrained_ids)] = (total / trained.sum()).astype(source.dtype)
    if source is not dest:
      dest[...] = source


def check_weights(source: Source, cfg: DecoderConfig, abstract: Mapping[tuple, Any]) -> None:
  """Every tensor present with the shape config.json implies, and nothing unknown left over."""
  reader = source.reader
  problems, used = [], set()
  for path, tmap in weights.leaves(cfg):
    our_shape = abstract[path].shape
    if cfg.scan_layers and tmap.per_layer:
      our_shape = our_shape[1:]
    want = tmap.hf_shape(our_shape)
    if tmap.hf in weights.VOCAB_TENSORS:
      want = (source.hf_rows,) + want[1:]
    for layer in weights.layers_of(path, tmap, cfg):
      name = tmap.hf_name(layer)
      used.add(name)
      if name not in reader:
        problems.append(f"  {name}: missing from {reader.where(name)} (the model needs {want})")
      elif reader.tensors[name].shape != want:
        problems.append(f"  {name} in {reader.where(name)}: shape "
                        f"{reader.tensors[name].shape}, but config.json implies {want}")
  extra = sorted(n for n in reader.tensors if n not in used and not weights.ignorable(n, cfg))
  problems += [f"  {n} in {reader.where(n)}: not a parameter of this model (a feature the decoder "
               f"lacks, or a config.json that does not match the weights)" for n in extra[:10]]
  if problems:
    raise ValueError(f"the weights in {reader.hf_dir} do not match its config.json "
                     f"({len(problems)} problems):\n" + "\n".join(problems[:30]))


def _leaf_loader(source: Source, path, tmap, cfg, shape, dtype):
  """The make_array_from_callback callback of one leaf: reads the HF tensor(s) behind an index."""
  last: dict = {}

  def load(index: tuple[slice, ...]) -> np.ndarray:
    key = tuple((s.start, s.stop) for s in index)
    if key in last:  # replicated shards ask for the same slice once per device
      return last[key]
    layers = weights.layers_of(path, tmap, cfg)
    if cfg.scan_layers and tmap.per_layer:
      layers, rest = layers[index[0]], index[1:]
      parts = [tmap.to_ours(source.read(tmap.hf_name(i)), shape[1:])[rest] for i in layers]
      out = np.stack([p.astype(dtype, copy=False) for p in parts])
    else:
      out = tmap.to_ours(source.read(tmap.hf_name(layers[0])), shape)[index]
      out = np.ascontiguousarray(out.astype(dtype, copy=False))
    last.clear()
    last[key] = out
    return out

  return load


def _largest_first(cfg: DecoderConfig, abstract: Mapping[tuple, Any]):
  # The transient buffers of a big tensor then sit beside few finished parameters.
  return sorted(weights.leaves(cfg), key=lambda pt: -int(np.prod(abstract[pt[0]].shape)))


def load_params_on_host(source: Source, cfg: DecoderConfig, dtype: str) -> dict:
  """One process: the params as NumPy arrays, each HF tensor read and converted straight into
  its place (no intermediate copies; a same-dtype copy-kind tensor is read in place)."""
  abstract = _flat(decoder_lib.abstract_params(cfg, partitioning.Partitioner(
      {"data": 1}, devices=jax.local_devices()[:1])))
  check_weights(source, cfg, abstract)
  np_dtype = np.dtype(jax.numpy.dtype(dtype))
  flat = {}
  for path, tmap in _largest_first(cfg, abstract):
    leaf = np.empty(abstract[path].shape, np_dtype)
    for position, layer in enumerate(weights.layers_of(path, tmap, cfg)):
      dest = leaf[position] if cfg.scan_layers and tmap.per_layer else leaf
      source.read_into(tmap, tmap.hf_name(layer), dest)
    flat[path] = leaf
  return _unflatten(flat)


def load_params_sharded(source: Source, cfg: DecoderConfig,
                        partitioner: partitioning.Partitioner, dtype: str) -> dict:
  """Several processes: sharded jax arrays; each process converts only its devices' slices."""
  abstract = _flat(decoder_lib.abstract_params(cfg, partitioner))
  check_weights(source, cfg, abstract)
  np_dtype = np.dtype(jax.numpy.dtype(dtype))
  flat = {}
  for path, tmap in _largest_first(cfg, abstract):
    target = abstract[path]
    flat[path] = jax.make_array_from_callback(
        target.shape, target.sharding,
        _leaf_loader(source, path, tmap, cfg, target.shape, np_dtype), dtype=np_dtype)
  return _unflatten(flat)


def _flat(tree) -> dict[tuple, Any]:
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out[tuple(p.key for p in path)] = leaf
  return out


def _unflatten(flat: Mapping[tuple, Any]) -> dict:
  tree: dict = {}
  for path, leaf in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = leaf
  return tree


def chunk_byte_size(shape: tuple[int, ...], itemsize: int) -> int | None:
  """SAVE_CHUNK_BYTES for an array orbax can cut into chunks of about that size; None (the
  array as one chunk) for one it cannot.

  orbax cuts a dimension only at its divisors, the largest dimension first. An embedding whose
  row count is prime (SmolLM2: 49,152 + 100 sentinel rows + 1 = 49,253) would be cut into one
  file per row: 49k files, each fsynced and renamed, 20 s for 113 MB."""
  nbytes = math.prod(shape) * itemsize
  if nbytes <= SAVE_CHUNK_BYTES:
    return None
  largest = max(shape)
  wanted = math.ceil(nbytes / SAVE_CHUNK_BYTES)
  parts = next((d for d in range(wanted, largest + 1) if largest % d == 0), largest)
  return SAVE_CHUNK_BYTES if parts <= MAX_CHUNK_SPLIT * wanted else None


def save_params(model_dir: str, params, step: int = 0) -> None:
  """Writes params as `model_dir/checkpoints/<step>/params`, the layout training restores.

  NumPy leaves are written without orbax's defensive copy of host arrays (the default handler
  deep-copies every array first, doubling the peak memory of an import); jax arrays go through
  the standard handler."""
  registry = ocp.type_handlers.create_type_handler_registry(
      (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
      (jax.Array, ocp.type_handlers.ArrayHandler()))
  handler = ocp.PyTreeCheckpointHandler(type_handler_registry=registry, use_ocdbt=False)
  options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False, create=True)
  with ocp.CheckpointManager(checkpoints.checkpoint_dir(model_dir), options=options,
                             item_handlers={checkpoints.PARAMS: handler}) as mngr:
    # Chunks of at most 64 MB, each encoded and written on its own; without OCDBT, whose
  # transaction holds every encoded chunk until the commit (+0.75x the model in a measurement).
    save_args = jax.tree.map(lambda leaf: ocp.SaveArgs(chunk_byte_size=chunk_byte_size(
        leaf.shape, np.dtype(leaf.dtype).itemsize)), params)
    mngr.save(step, args=ocp.args.Composite(**{checkpoints.PARAMS: ocp.args.PyTreeSave(
        params, save_args=save_args)}))
    mngr.wait_until_finished()


def model_gin(cfg: DecoderConfig, vocabulary: Mapping[str, Any], source: str) -> str:
  lines = [f"# Written by `ul2flan import-hf` from {source}.",
           "# Include it as the model gin file of a run; override any binding after it."]
  lines += [f"DecoderConfig.{k} = {v!r}" for k, v in dataclasses.asdict(cfg).items()]
  lines += [f"get_vocabulary.{k} = {v!r}" for k, v in vocabulary.items()]
  return "\n".join(lines) + "\n"


def fingerprint(hf_dir: str, reader: safetensors_io.WeightsReader, dtype: str,
                scan_layers: bool) -> dict[str, Any]:
  """What the conversion depends on: config.json's content, the weight files' names and sizes."""
  config_hash = hashlib.sha256(paths.resolve(hf_dir).joinpath(CONFIG_FILE).read_bytes()
                               ).hexdigest()
  files = sorted({info.path for info in reader.tensors.values()})
  return {"source": hf_dir, "config_sha256": config_hash,
          "weights": {paths.resolve(p).name: paths.file_size(p) for p in files},
          "dtype": dtype, "scan_layers": scan_layers}


def import_hf(hf_dir: str, out_dir: str, *, dtype: str = "float32", scan_layers: bool = False,
              sentinels: str = import_vocabulary.AUTO, num_sentinels: int = 100,
              reserved_pattern: str = token_layout.LLAMA3_RESERVED_PATTERN,
              mesh_shape: Mapping[str, int] | None = None) -> str:
  """Converts a Hugging Face model dir into a ul2flan model dir; returns `out_dir`.

  `sentinels` / `num_sentinels` / `reserved_pattern`: the vocabulary's sentinel policy
  (`import_vocabulary`; "auto" takes the first that fits). A re-run with the same source and
  settings reuses `out_dir`; an `out_dir` that holds anything else is refused. With several
  processes, `mesh_shape` (default: FSDP over every device) is how the params are sharded while
  they are built and written.
  """
  hf_dir, out_dir = str(paths.resolve(hf_dir)), str(paths.resolve(out_dir))
  hf_rows = decoder_config(hf_dir).vocab_size  # validates config.json first
  vocab = import_vocabulary.plan(hf_dir, hf_rows, sentinels, num_sentinels, reserved_pattern)
  cfg = decoder_config(hf_dir, dtype, scan_layers, vocab.layout.vocab_size)
  reader = safetensors_io.WeightsReader(hf_dir)
  source = Source(reader, hf_rows, vocab.layout, vocab.reinit)
  marker = {"kind": "import-hf", "source": hf_dir,
            "fingerprint": dict(fingerprint(hf_dir, reader, dtype, scan_layers),
                                vocabulary=vocab.settings)}
  if output_dir.already_written(out_dir, marker["fingerprint"]):
    return out_dir
  if jax.process_count() == 1:
    params = load_params_on_host(source, cfg, dtype)
  else:
    partitioner = partitioning.Partitioner(mesh_shape or {"fsdp": -1})
    params = load_params_sharded(source, cfg, partitioner, dtype)
  vocabulary = dataclasses.asdict(vocabularies.VocabularySpec(
      kind="hf", path=paths.join(out_dir, TOKENIZER_DIR), **vocab.settings))
  with output_dir.staging(out_dir, marker) as tmp:
    save_params(tmp, params)
    del params
    if jax.process_index() == 0:
      tokenizer_dir = paths.join(tmp, TOKENIZER_DIR)
      tokenizer_files.copy_files(vocab.tokenizer_dir, tokenizer_dir,
                                 tokenizer_files.TOKENIZER_FILES)
      tokenizer_files.copy_files(hf_dir, tokenizer_dir, tokenizer_files.MODEL_CONFIG_FILES)
      config_lib.write_run_info(tmp, config_lib.RunInfo(
          model=dataclasses.asdict(cfg), feature_converter="lm", task_feature_lengths={},
          vocabulary=vocabulary))
      paths.resolve(tmp).joinpath(MODEL_GIN).write_text(model_gin(cfg, vocabulary, hf_dir))
  logger.info("imported %s (%s, %d layers, sentinels: %s) into %s", hf_dir,
              read_hf_config(hf_dir)["model_type"], cfg.num_layers, vocab.settings["sentinels"],
              out_dir)
  return out_dir
