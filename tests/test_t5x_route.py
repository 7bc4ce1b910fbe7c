"""The tasks used the way upstream t5x uses them: gin parsed and locked, `import ul2flan_tasks`
in the gin file, the model's vocabulary and feature converter bound in gin. Gin checks run in a
fresh interpreter, as t5x's `train.py` would.

t5x is not installed. `T5X_MODELS` stands in for the part of t5x's `models.DecoderOnlyModel` the
route depends on: its constructor's argument names, and its `FEATURE_CONVERTER_CLS`, which is
`seqio.DecoderFeatureConverter` unless `feature_converter_cls` is given. `t5x_get_dataset` is the
`seqio.get_dataset` call of t5x's `utils.get_dataset_inner`, argument for argument (t5x HEAD
cc342d4): train and train-eval batches reach the model only through it.
"""

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import seqio
import tensorflow as tf

import hf_fixtures
import ul2flan_tasks
from helpers import REPO_ROOT
from ul2flan.hf_vocab import vocabulary as hf_vocabulary
from ul2flan.training import data
from ul2flan.ul2 import tasks as ul2_tasks

T5X_LIKE = textwrap.dedent("""
    import gin, seqio

    @gin.configurable
    def decoder_only_model(vocabulary=gin.REQUIRED):  # stands in for t5x's DecoderOnlyModel
      return vocabulary

    gin.parse_config('''{gin_text}''')
    gin.finalize()  # t5x locks the config after parsing
    model_vocabulary = decoder_only_model()
    from ul2flan import registration
    ours = [n for n in seqio.TaskRegistry.names() if registration.registered_by_ul2flan(n)]
    assert {{"demo_lm", "demo_ul2r", "demo_flan_fact_qa"}} <= set(ours), ours
    for name in ours:
      for feature in seqio.get_mixture_or_task(name).output_features.values():
        # t5x compares the task's vocabulary with the model's, in this order.
        assert not (feature.vocabulary != model_vocabulary), name
    assert model_vocabulary.extra_ids == 50 and model_vocabulary.vocab_size == 668 + 50
    example = next(seqio.get_mixture_or_task("demo_ul2r").get_dataset(
        {{"inputs": 64, "targets": 64}}, split="validation", shuffle=False).as_numpy_iterator())
    assert max(example["inputs"].tolist() + example["targets"].tolist()) < 718
    print("vocabularies agree")
""")

BINDINGS = """
get_vocabulary.kind = 'demo'
get_vocabulary.extra_ids = 50
VOCABULARY = @get_vocabulary()
decoder_only_model.vocabulary = %VOCABULARY
"""

# ---- a stand-in t5x, for the README's gin text as written --------------------------------------

T5X_MODELS = textwrap.dedent('''
    """Stands in for t5x.models: how DecoderOnlyModel picks its feature converter."""
    import seqio


    class DecoderOnlyModel:
      FEATURE_CONVERTER_CLS = seqio.DecoderFeatureConverter  # t5x's default for this model

      def __init__(self, module, vocabulary, optimizer_def, decode_fn=None,
                   inputs_bidirectional_attention=False, feature_converter_cls=None,
                   label_smoothing=0.0, z_loss=0.0, loss_normalizing_factor=None):
        if feature_converter_cls is not None:
          self.FEATURE_CONVERTER_CLS = feature_converter_cls
        self.vocabulary = vocabulary
        self.inputs_bidirectional_attention = inputs_bidirectional_attention
''')

T5X_NETWORK = textwrap.dedent('''
    """Stands in for t5x.examples.decoder_only.network: the names the README binds."""


    class TransformerConfig:
      def __init__(self, vocab_size=0):
        self.vocab_size = vocab_size


    class DecoderWrapper:
      def __init__(self, config):
        self.config = config
''')

# Shaped like t5x's own model and run gin files: dynamic registration, the model as a macro, and
# `train` reached through `import __main__`.
T5X_MODEL_GIN = textwrap.dedent("""
    from __gin__ import dynamic_registration
    import __main__ as train_script
    from t5x import models
    from t5x.examples.decoder_only import network

    VOCABULARY = 'replaced by the route'
    MODEL = @models.DecoderOnlyModel()
    models.DecoderOnlyModel:
      module = @network.DecoderWrapper()
      vocabulary = %VOCABULARY
      optimizer_def = None
    network.DecoderWrapper.config = @network.TransformerConfig()
    network.TransformerConfig.vocab_size = 32128
    train_script.train.model = %MODEL
""")

# The test's own bindings after the README's: the demo vocabulary instead of a bucket's.
LOCAL_VOCABULARY = """
get_vocabulary.kind = 'demo'
get_vocabulary.path = None
network.TransformerConfig.vocab_size = 768
"""

# What t5x's train.py does with gin: make `train` configurable, parse the files, lock, call it;
# then what its train and infer paths do with the model's converter class.
T5X_TRAIN = textwrap.dedent("""
    import json
    import gin

    def train(model=gin.REQUIRED):
      return model

    train_using_gin = gin.configurable(train)
    gin.parse_config_files_and_bindings(["user.gin"], None, finalize_config=True)
    import ul2flan_tasks as ours  # imported by the gin file already; here to compare with
    model = train_using_gin()
    cls = model.FEATURE_CONVERTER_CLS
    lengths = {"inputs": 1024, "targets": 1024}
    report = {
        "full_row_converter": issubclass(cls, ours.FullRowDecoderFeatureConverter),
        "bidirectional": model.inputs_bidirectional_attention,
        "vocab_size": model.vocabulary.vocab_size,
        "train_lengths": cls(pack=True, use_custom_packing_ops=False).get_model_feature_lengths(
            lengths),
        "infer_lengths": cls(pack=False).get_model_feature_lengths(lengths),
    }
    # The operative config t5x saves (gin's dynamic-registration form) parses back to the same.
    saved = gin.config_str()
    with gin.unlock_config():
      gin.clear_config(clear_constants=True)
      gin.parse_config(saved)
    report["saved_config_converter"] = issubclass(train_using_gin().FEATURE_CONVERTER_CLS,
                                                  ours.FullRowDecoderFeatureConverter)
    print("REPORT", json.dumps(report))
""")


def _run(code: str, cwd: str = REPO_ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                        timeout=300, env=env)


def readme_t5x_section() -> str:
  """README.md's "Using the tasks from upstream t5x"."""
  with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  return readme.split("## Using the tasks from upstream t5x", 1)[1].split("\n## ", 1)[0]


def readme_t5x_snippet() -> str:
  """The gin text of that section, as users copy it."""
  return re.search(r"```\n(.*?)```", readme_t5x_section(), re.S).group(1)


def readme_converter_name() -> str:
  return re.search(r"feature_converter_cls = @(\S+)", readme_t5x_snippet()).group(1)


def test_gin_import_route_gives_model_and_tasks_one_vocabulary():
  """The vocabulary bound AFTER `import ul2flan_tasks` (the order that used to split model and
  tasks: extra_ids 0 vs 100) is the one every task uses: tasks read it when used."""
  r = _run(T5X_LIKE.format(gin_text="import ul2flan_tasks\n" + BINDINGS))
  assert r.returncode == 0 and "vocabularies agree" in r.stdout, r.stderr[-3000:]


def test_registering_never_replaces_a_users_task_of_the_same_name():
  code = textwrap.dedent("""
      import functools, seqio
      seqio.TaskRegistry.add(
          "demo_lm", source=seqio.FunctionDataSource(lambda split, shuffle_files: None, ["train"]),
          preprocessors=[], output_features={})
      try:
        import ul2flan_tasks
      except ValueError as e:
        print("refused:", e)
  """)
  r = _run(code)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "refused:" in r.stdout and "'demo_lm'" in r.stdout and "not by ul2flan" in r.stdout


def in_dynamic_registration_mode(gin_text: str) -> str:
  """What the README tells a file under `dynamic_registration` to change: import every module
  whose names it binds, and name `get_vocabulary` through its module."""
  return ("from __gin__ import dynamic_registration\n"
          "from ul2flan import vocabularies\n"
          "from t5x.examples.decoder_only import network\n" +
          re.sub(r"\bget_vocabulary\b", "vocabularies.get_vocabulary", gin_text))


@pytest.mark.parametrize("gin_mode", ["default", "dynamic_registration"])
def test_readme_gin_gives_the_model_the_full_row_converter(tmp_path, gin_mode):
  """The README's gin text after a t5x-style model file (verbatim, or as the README says to write
  it under dynamic registration): the model's converter class is ul2flan's, it takes what t5x's
  train and infer paths pass, and the config t5x saves keeps it."""
  network_dir = tmp_path / "t5x" / "examples" / "decoder_only"
  network_dir.mkdir(parents=True)
  for package in (tmp_path / "t5x", tmp_path / "t5x" / "examples", network_dir):
    (package / "__init__.py").write_text("")
  (tmp_path / "t5x" / "models.py").write_text(T5X_MODELS)
  (network_dir / "network.py").write_text(T5X_NETWORK)
  (tmp_path / "t5x_model.gin").write_text(T5X_MODEL_GIN)
  route = readme_t5x_snippet() + LOCAL_VOCABULARY
  if gin_mode == "dynamic_registration":
    route = in_dynamic_registration_mode(route)
    assert readme_converter_name() in route  # the converter line is left as it is
  (tmp_path / "user.gin").write_text("include 't5x_model.gin'\n" + route)
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      [str(tmp_path), REPO_ROOT, os.environ.get("PYTHONPATH", "")])}
  r = _run(T5X_TRAIN, cwd=str(tmp_path), env=env)
  assert r.returncode == 0, r.stderr[-3000:]
  report = json.loads(r.stdout.split("REPORT ", 1)[1])
  row = 2048  # 1024 inputs + 1024 targets: one decoder row
  assert report == {
      "full_row_converter": True, "bidirectional": True, "vocab_size": 668 + 100,
      "train_lengths": {k: row for k in ("decoder_target_tokens", "decoder_input_tokens",
                                         "decoder_loss_weights", "decoder_segment_ids",
                                         "decoder_positions", "decoder_causal_attention")},
      "infer_lengths": {k: row for k in ("decoder_target_tokens", "decoder_input_tokens",
                                         "decoder_loss_weights", "decoder_causal_attention")},
      "saved_config_converter": True}


def test_converter_name_survives_a_second_import_and_a_locked_gin():
  """t5x locks gin before it imports MIXTURE_OR_TASK_MODULE: with the library already imported,
  importing ul2flan_tasks then (and again) still registers the converter's gin name."""
  code = textwrap.dedent(f"""
      import ast, glob, importlib
      import gin

      @gin.configurable
      def uses_converter(converter_cls=None):
        return converter_cls

      # What tasks/*.py import from the library (and so its configurables), before the lock.
      for path in glob.glob("tasks/*.py"):
        for node in ast.walk(ast.parse(open(path).read())):
          if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ul2flan"):
            for alias in node.names:
              try:
                importlib.import_module(node.module + "." + alias.name)
              except ModuleNotFoundError:  # a name defined in the module, not a submodule
                importlib.import_module(node.module)
      gin.parse_config("")
      gin.finalize()
      import ul2flan_tasks
      import ul2flan_tasks
      with gin.unlock_config():
        gin.parse_config("uses_converter.converter_cls = @{readme_converter_name()}")
      assert issubclass(uses_converter(), ul2flan_tasks.FullRowDecoderFeatureConverter)
      print("registered")
  """)
  r = _run(code)
  assert r.returncode == 0 and "registered" in r.stdout, r.stderr[-3000:]


# ---- batches as t5x makes them ---------------------------------------------------------------

SEED = 0
BATCH_SIZE = 8
BATCHES = 4
T5X_MODEL_FEATURES = {  # what t5x's DecoderOnlyModel reads from a packed prefix-LM batch
    "decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
    "decoder_causal_attention", "decoder_segment_ids", "decoder_positions"}
UL2R_LENGTHS = {"inputs": 128, "targets": 128}  # the t5x lengths
FLAN_LENGTHS = {"inputs": 224, "targets": 96}  # what the demo's Flan stages train at
HF_TASK = "t5x_route_hf_ul2r"


def t5x_get_dataset(name: str, lengths, converter_cls) -> tf.data.Dataset:
  """t5x `utils.get_dataset_inner` for one host: its `seqio.get_dataset` call as it makes it
  (`DatasetConfig`: shuffle on, `pack = True`, `use_custom_packing_ops` and `use_cached` off,
  `trim_output_features` on; `utils.get_dataset`: endless epochs, the config's seed)."""
  shard_info = seqio.ShardInfo(index=0, num_shards=1)
  return seqio.get_dataset(
      mixture_or_task_name=seqio.get_mixture_or_task(name), task_feature_lengths=lengths,
      dataset_split="train", shuffle=True, num_epochs=None,
      feature_converter=converter_cls(pack=True, use_custom_packing_ops=False),
      shard_info=shard_info, use_cached=False, seed=SEED, trim_output_features=True,
      batch_size=BATCH_SIZE // shard_info.num_shards)


def non_padding_share(batches) -> float:
  return float(np.mean([b["decoder_segment_ids"] != 0 for b in batches]))


@pytest.fixture(scope="module")
def hf_ul2r_task(tmp_path_factory):
  """UL2R with a Llama-3-like Hugging Face vocabulary (its own sentinels) over a small corpus."""
  tokenizer_dir = hf_fixtures.llama3_like(str(tmp_path_factory.mktemp("t5x_hf") / "llama3"))
  corpus = hf_fixtures.corpus(300)

  def documents(split, shuffle_files, seed=None):
    del split, shuffle_files, seed  # one split, read in order
    return tf.data.Dataset.from_tensor_slices({"text": corpus})

  source = seqio.FunctionDataSource(documents, splits=["train"])
  ul2_tasks.register_ul2_task(HF_TASK, source, "UL2R",
                              vocabulary=hf_vocabulary.HfVocabulary(tokenizer_dir),
                              overwrite=True)
  return HF_TASK


@pytest.mark.parametrize("name, lengths, least_fill", [
    ("demo_ul2r", UL2R_LENGTHS, 0.99), ("demo_flan", FLAN_LENGTHS, 0.0),
    (HF_TASK, UL2R_LENGTHS, 0.99)])
def test_t5x_batches_are_whole_examples_in_rows_as_full_as_ul2flans(name, lengths, least_fill,
                                                                    hf_ul2r_task):
  """Through the converter the README names, as t5x calls seqio: batches carry the features
  t5x's DecoderOnlyModel reads; every packed segment is one whole task example (never cut) with
  its bidirectional prefix and loss where seqio's prefix LM puts them; and the rows are as full as
  ul2flan's own trainer (`HostIterator`, same task, lengths and seed) makes them."""
  assert readme_converter_name() == "ul2flan_tasks.FullRowDecoderFeatureConverter"
  iterator = t5x_get_dataset(name, lengths, ul2flan_tasks.FullRowDecoderFeatureConverter
                             ).as_numpy_iterator()
  batches = [next(iterator) for _ in range(BATCHES)]
  row = lengths["inputs"] + lengths["targets"]
  for batch in batches:
    assert set(batch) == T5X_MODEL_FEATURES
    assert all(v.shape == (BATCH_SIZE, row) and v.dtype == np.int32 for v in batch.values())

  # The reference: the task's own examples, read with the arguments seqio.get_dataset passes on.
  raw = seqio.get_mixture_or_task(name).get_dataset(
      lengths, split="train", shuffle=True, seed=SEED, shard_info=seqio.ShardInfo(0, 1),
      num_epochs=None, trim_output_features=True)
  splits: dict[tuple, set] = {}  # inputs + targets -> len(inputs)
  for ex in raw.take(400).as_numpy_iterator():
    splits.setdefault(tuple(ex["inputs"].tolist() + ex["targets"].tolist()),
                      set()).add(len(ex["inputs"]))
  segments = 0
  for batch in batches:
    for r in range(BATCH_SIZE):
      seg = batch["decoder_segment_ids"][r]
      for s in np.unique(seg[seg > 0]):
        at = np.flatnonzero(seg == s)
        assert np.array_equal(at, np.arange(at[0], at[-1] + 1)), "a segment is contiguous"
        tokens = batch["decoder_target_tokens"][r, at]
        num_inputs = int(batch["decoder_causal_attention"][r, at].sum()) - 1
        assert num_inputs in splits.get(tuple(tokens.tolist()), ()), (name, r, s)
        position = np.arange(len(at))
        # The inputs, and the position whose decoder input is their EOS, attend both ways.
        assert np.array_equal(batch["decoder_causal_attention"][r, at], position <= num_inputs)
        assert np.array_equal(batch["decoder_loss_weights"][r, at], position >= num_inputs)
        assert np.array_equal(batch["decoder_positions"][r, at], position)
        assert np.array_equal(batch["decoder_input_tokens"][r, at], np.r_[0, tokens[:-1]])
        segments += 1
  assert segments >= BATCH_SIZE * BATCHES

  host = data.HostIterator(data.DatasetConfig(
      mixture_or_task_name=name, task_feature_lengths=lengths, batch_size=BATCH_SIZE,
      shuffle=True, seed=SEED, pack=True, feature_converter="prefix_lm"), 0, 1)
  ours = [next(host) for _ in range(BATCHES)]
  host.close()
  fill = non_padding_share(batches)
  assert fill == pytest.approx(non_padding_share(ours), abs=0.01)
  assert fill >= least_fill


def test_without_the_converter_t5x_stops_with_the_error_the_readme_explains():
  """t5x's default converter checks each feature against its own length, which a full-row UL2R
  example exceeds: the first batch fails with seqio's message, which the README quotes so that a
  search for it finds the converter to name."""
  seqio_message = ("Feature 'inputs' has length not less than or equal to the expected length "
                   "of 128")
  assert seqio_message.replace("128", "...") in " ".join(readme_t5x_section().split())
  # TensorFlow's message escapes the quotes.
  pattern = re.escape(seqio_message).replace("'", r"\\?'")
  with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
    next(t5x_get_dataset("demo_ul2r", UL2R_LENGTHS, seqio.DecoderFeatureConverter
                         ).as_numpy_iterator())


STOCK_CONVERTER_IN_T5X = textwrap.dedent("""
    import gin, seqio

    @gin.configurable
    class DecoderOnlyModel:  # stands in for t5x's models.DecoderOnlyModel
      def __init__(self, feature_converter_cls=None):
        self.feature_converter_cls = feature_converter_cls

    gin.parse_config('''import ul2flan_tasks
    get_vocabulary.kind = 'demo'
    {binding}''')
    gin.finalize()
    converter = DecoderOnlyModel().feature_converter_cls or seqio.DecoderFeatureConverter
    try:
      next(seqio.get_dataset("demo_ul2r", {{"inputs": 128, "targets": 128}},
                             dataset_split="train", shuffle=False, use_cached=False,
                             feature_converter=converter(pack=True)).as_numpy_iterator())
      print("BATCH")
    except ValueError as e:
      print("MESSAGE", e)
""")


@pytest.mark.parametrize("converter_line", [False, True])
def test_t5x_without_the_converter_line_is_told_which_to_name(converter_line):
  """With t5x's DecoderOnlyModel in gin and no converter named, building a UL2R dataset fails in
  Python, before tf.data runs, with the line to add; with the line, the batch comes."""
  binding = ("DecoderOnlyModel.feature_converter_cls = "
             "@ul2flan_tasks.FullRowDecoderFeatureConverter" if converter_line else "")
  r = _run(STOCK_CONVERTER_IN_T5X.format(binding=binding))
  assert r.returncode == 0, r.stderr[-3000:]
  if converter_line:
    assert "BATCH" in r.stdout, r.stdout
  else:
    assert ("MESSAGE" in r.stdout and "models.DecoderOnlyModel.feature_converter_cls = "
            "@ul2flan_tasks.FullRowDecoderFeatureConverter" in r.stdout), r.stdout
