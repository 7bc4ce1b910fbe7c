"""Imported Hugging Face models against transformers itself (the reference), per family.

Each family's tiny random model (tests/hf_reference.py, features switched on) is saved with
`save_pretrained` beside a tokenizer of exactly its vocabulary size, imported with
`ul2flan.hf.importer`, restored the way training restores an INITIAL_CHECKPOINT_PATH, and compared
with transformers on 320-token inputs (RoPE is the identity at position 0, so short inputs would
hide RoPE bugs). ul2flan's ids are the tokenizer's with BOS and id 0 swapped, plus 100 new sentinel
rows (`sentinels='auto'` picks `new_rows` here): `swap_ids` lines the two up.
"""

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import hf_reference
from ul2flan import checkpoints, config as config_lib, partitioning
from ul2flan.hf import exporter, importer, output_dir
from ul2flan.inference import decoding
from ul2flan.model import decoder as decoder_lib

FAMILIES = sorted(hf_reference.CONFIGS)
LENGTH = 320


@dataclasses.dataclass(frozen=True)
class Imported:
  model: object  # the transformers model
  hf_dir: str
  model_dir: str
  cfg: object
  params: dict
  to_model: np.ndarray  # ul2flan id of each tokenizer id

  def ours(self, hf_ids: np.ndarray, **kwargs) -> np.ndarray:
    """ul2flan's logits for tokenizer ids, columns in the tokenizer's order."""
    logits = decoder_lib.Decoder(self.cfg).apply(
        {"params": self.params}, jnp.asarray(self.to_model[hf_ids]), **kwargs)
    return np.asarray(logits)[..., self.to_model]


@functools.lru_cache(maxsize=None)
def _imported(name: str, scan_layers: bool, root: str) -> Imported:
  tokenizer = hf_reference.train_tokenizer(300)
  model = hf_reference.build_model(name, seed=len(name), vocab_size=len(tokenizer))
  hf_dir = hf_reference.save_model(model, os.path.join(root, f"{name}_hf"), tokenizer=tokenizer,
                                   legacy_rope_keys=name == "llama_tied")
  model_dir = importer.import_hf(hf_dir, os.path.join(root, f"{name}_{scan_layers}"),
                                 scan_layers=scan_layers)
  info = config_lib.read_run_info(model_dir)
  cfg = info.decoder_config
  assert info.vocabulary["sentinels"] == "new_rows" and cfg.vocab_size == len(tokenizer) + 100
  params, _ = checkpoints.restore_params(model_dir, decoder_lib.abstract_params(
      cfg, partitioning.Partitioner({"data": 1}, devices=jax.devices()[:1])))
  return Imported(model, hf_dir, model_dir, cfg, params,
                  hf_reference.swap_ids(tokenizer, len(tokenizer)))


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("hf"))
  return lambda name, scan_layers=False: _imported(name, scan_layers, root)


def tokens(vocab_size: int, batch: int = 2, length: int = LENGTH, seed: int = 0) -> np.ndarray:
  return np.random.RandomState(seed).randint(0, vocab_size, (batch, length)).astype(np.int32)


@pytest.mark.parametrize("name", FAMILIES)
def test_logits_equal_transformers(imported, name):
  m = imported(name)
  ids = tokens(len(m.to_model))
  want = hf_reference.hf_logits(m.model, ids)
  assert np.abs(want).max() > 1.0  # the comparison is not between near-zero logits
  np.testing.assert_allclose(m.ours(ids), want, atol=1e-4, rtol=0)


def test_scanned_import_and_export_give_the_same_logits(imported, tmp_path):
  import transformers
  m = imported("llama", scan_layers=True)
  assert m.cfg.scan_layers and "layers" in m.params
  ids = tokens(len(m.to_model), batch=1)
  want = hf_reference.hf_logits(m.model, ids)
  np.testing.assert_allclose(m.ours(ids), want, atol=1e-4, rtol=0)
  out = exporter.export_hf(m.model_dir, str(tmp_path / "export"))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  np.testing.assert_allclose(hf_reference.hf_logits(reloaded, ids)[..., :len(m.to_model)], want,
                             atol=1e-4, rtol=0)
  # The same dir again is reused; another model into it is refused.
  assert exporter.export_hf(m.model_dir, out) == out
  with pytest.raises(output_dir.OutputDirError, match="already holds a different model"):
    exporter.export_hf(imported("llama").model_dir, out)


@pytest.mark.parametrize("name", FAMILIES)
def test_greedy_generation_equals_transformers_generate(imported, name):
  m = imported(name)
  prompt = tokens(len(m.to_model), batch=1, length=100, seed=1)
  with torch.no_grad():
    want = m.model.generate(torch.as_tensor(prompt, dtype=torch.long), max_new_tokens=32,
                            do_sample=False, pad_token_id=0)[0, prompt.shape[1]:].numpy()
  got = decoding.decode(m.params, m.cfg, m.to_model[prompt], np.array([prompt.shape[1]]),
                        decoding.DecodeSettings(max_new_tokens=32, eos_id=None)).tokens[0]
  assert len(want) == 32
  np.testing.assert_array_equal(got, m.to_model[want])


@pytest.mark.parametrize("name", FAMILIES)
def test_export_loads_in_transformers_and_reimports_bit_identically(imported, tmp_path, name):
  import transformers
  m = imported(name)
  out = exporter.export_hf(m.model_dir, str(tmp_path / "export"))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  assert reloaded.config.vocab_size == m.cfg.vocab_size  # the sentinel rows are exported too
  ids = tokens(len(m.to_model), batch=1, seed=2)
  theirs = hf_reference.hf_logits(reloaded, ids)
  np.testing.assert_allclose(theirs[..., :len(m.to_model)], m.ours(ids), atol=1e-4, rtol=0)
  again = importer.import_hf(out, str(tmp_path / "reimport"))
  cfg2 = config_lib.read_run_info(again).decoder_config
  assert cfg2 == m.cfg
  params2, _ = checkpoints.restore_params(again, decoder_lib.abstract_params(
      cfg2, partitioning.Partitioner({"data": 1}, devices=jax.devices()[:1])))
  for a, b in zip(jax.tree.leaves(m.params), jax.tree.leaves(params2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def prefix_lm_attention_mask(config, prompt_length: int, total_length: int):
  """What to pass as `attention_mask`: one mask, or one per layer type (Gemma 2, Qwen) when
  sliding and global layers mix."""
  window = getattr(config, "sliding_window", None)
  types = set(getattr(config, "layer_types", None) or [])
  if window is None or types == {"full_attention"}:
    return hf_reference.prefix_lm_mask(prompt_length, total_length)
  if not types:  # Mistral: every layer slides
    return hf_reference.prefix_lm_mask(prompt_length, total_length, window)
  return {"full_attention": hf_reference.prefix_lm_mask(prompt_length, total_length),
          "sliding_attention": hf_reference.prefix_lm_mask(prompt_length, total_length, window)}


def hf_prefix_lm_greedy(model, prompt: torch.Tensor, max_new_tokens: int) -> list[int]:
  """docs/hf.md's loop: the prompt in one pass under the prefix mask, then cached causal steps."""
  length = prompt.shape[1]
  with torch.no_grad():
    out = model(prompt, attention_mask=prefix_lm_attention_mask(model.config, length, length),
                use_cache=True)
    tokens = [int(out.logits[0, -1].argmax())]
    for _ in range(max_new_tokens - 1):
      out = model(torch.tensor([[tokens[-1]]]), cache=out.cache, use_cache=True)
      tokens.append(int(out.logits[0, -1].argmax()))
  return tokens


@pytest.mark.parametrize("name", ["llama", "mistral", "gemma2"])
def test_exported_model_runs_as_a_prefix_lm_in_transformers(imported, tmp_path, name):
  import transformers
  m = imported(name)
  out = exporter.export_hf(m.model_dir, str(tmp_path / "export"))
  model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  ids = tokens(len(m.to_model), batch=1, seed=3)
  prefix = np.zeros_like(ids)
  prefix[:, :200] = 1
  ours = m.ours(ids, decoder_causal_attention=jnp.asarray(prefix))
  theirs = hf_reference.hf_logits(
      model, ids, attention_mask=prefix_lm_attention_mask(model.config, 200, LENGTH))
  np.testing.assert_allclose(theirs[..., :len(m.to_model)], ours, atol=1e-4, rtol=0)
  causal = hf_reference.hf_logits(model, ids)[..., :len(m.to_model)]
  # Run causally, the same weights read the prompt differently, and so predict differently.
  assert np.abs(causal[:, :199] - ours[:, :199]).max() > 1e-2
  assert np.abs(causal[:, 200:] - ours[:, 200:]).max() > 1e-2
  prompt = ids[:, :100]
  want = decoding.decode(m.params, m.cfg, m.to_model[prompt], np.array([100]),
                         decoding.DecodeSettings(max_new_tokens=32, prefix_lm=True,
                                                 eos_id=None)).tokens[0]
  got = hf_prefix_lm_greedy(model, torch.as_tensor(prompt).long(), 32)
  np.testing.assert_array_equal(m.to_model[np.array(got)], want)
