"""Corpus sources: every kind read from small files written here, and clear errors on bad input."""

import json
import math
import os

import pytest
import seqio
import tensorflow as tf

from ul2flan.demo import corpus as _demo_corpus  # noqa: F401  (registers the "demo" spec)
from ul2flan.ul2 import sources as corpus_sources
from ul2flan.ul2 import tasks as ul2_tasks
from ul2flan.ul2 import denoisers
from ul2flan import vocabularies
from ul2flan.demo import world


@pytest.fixture(scope="module")
def vocabulary():
  return vocabularies.get_vocabulary()


DOCS = ["Alice lives in Paris. Alice is a baker.", "Bruno owns a parrot.",
        "Clara moves the ball from the box to the jar. So now the ball is in the jar."]


def texts(source, split="train", shard_info=None):
  ds = source.get_dataset(split=split, shuffle=False, shard_info=shard_info)
  return [ex[corpus_sources.TEXT_KEY].decode() for ex in ds.as_numpy_iterator()]


def write(path, content):
  mode = "wb" if isinstance(content, bytes) else "w"
  with open(path, mode) as f:
    f.write(content)
  return str(path)


def write_tfrecord(path, docs, feature="text"):
  with tf.io.TFRecordWriter(str(path)) as writer:
    for doc in docs:
      example = tf.train.Example(features=tf.train.Features(feature={
          feature: tf.train.Feature(bytes_list=tf.train.BytesList(value=[doc.encode()]))}))
      writer.write(example.SerializeToString())
  return str(path)


# ------------------------------------------------------------------------------------------------
# Reading each kind.

def test_text_files_one_document_per_non_blank_line(tmp_path):
  write(tmp_path / "train-0.txt", DOCS[0] + "\n\n  \n" + DOCS[1] + "\n")
  write(tmp_path / "train-1.txt", DOCS[2] + "\n")
  write(tmp_path / "validation-0.txt", "held out\n")
  source = corpus_sources.text_files_source(str(tmp_path / "{split}-*.txt"))
  assert sorted(texts(source)) == sorted(DOCS)
  assert texts(source, "validation") == ["held out"]


def test_text_files_one_document_per_file(tmp_path):
  for i, doc in enumerate(DOCS):
    write(tmp_path / f"doc{i}.md", doc.replace(". ", ".\n\n"))
  source = corpus_sources.text_files_source(str(tmp_path / "*.md"), per="file")
  assert sorted(t.replace(".\n\n", ". ") for t in texts(source)) == sorted(DOCS)


def test_jsonl_with_a_configurable_text_field(tmp_path):
  lines = [json.dumps({"body": d, "id": i}) for i, d in enumerate(DOCS)]
  write(tmp_path / "train.jsonl", "\n".join(lines) + "\n\n")
  source = corpus_sources.jsonl_source(str(tmp_path / "{split}.jsonl"), text_field="body")
  assert texts(source) == DOCS


def test_tfrecord_of_tf_examples(tmp_path):
  write_tfrecord(tmp_path / "train-00000.tfrecord", DOCS[:2], feature="content")
  write_tfrecord(tmp_path / "train-00001.tfrecord", DOCS[2:], feature="content")
  source = corpus_sources.tfrecord_source(str(tmp_path / "train-*.tfrecord"),
                                          text_feature="content")
  assert sorted(texts(source)) == sorted(DOCS)
  # Enough files for two hosts: each reads its own file, together all of them.
  halves = [texts(source, shard_info=seqio.ShardInfo(i, 2)) for i in (0, 1)]
  assert sorted(halves[0] + halves[1]) == sorted(DOCS) and not set(halves[0]) & set(halves[1])


def test_embedded_demo_corpus():
  source = corpus_sources.source_from_spec("demo")
  assert texts(source, "validation")[:3] == world.corpus_documents("validation")[:3]


def test_tfds_dataset_prepared_locally(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class Ul2flanTinyCorpus(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      features = tfds.features.FeaturesDict({"text": tfds.features.Text()})
      return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(DOCS), "validation": self._generate_examples(["v"])}

    def _generate_examples(self, docs):
      for i, doc in enumerate(docs):
        yield i, {"text": doc}

  source = corpus_sources.tfds_source("ul2flan_tiny_corpus:1.0.0", data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="ul2flan_tiny_corpus:1.0.0.*not prepared"):
    texts(source)
  Ul2flanTinyCorpus(data_dir=str(tmp_path)).download_and_prepare()
  assert sorted(texts(source)) == sorted(DOCS)
  assert texts(source, "validation") == ["v"]


def test_tfds_source_definition_reads_nothing_and_use_says_how_to_prepare(tmp_path):
  source = corpus_sources.source_from_spec("tfds:c4/en:3.0.1")  # no data anywhere: no error yet
  task = ul2_tasks.register_ul2_task("test_c4_missing", source, "UL2R", overwrite=True)
  os.environ["TFDS_DATA_DIR"] = str(tmp_path)
  try:
    with pytest.raises(FileNotFoundError,
                       match=r"c4/en:3.0.1.*download_and_prepare.*TFDS_DATA_DIR"):
      task.get_dataset({"inputs": 1024, "targets": 1024}, split="train")
  finally:
    del os.environ["TFDS_DATA_DIR"]


# ------------------------------------------------------------------------------------------------
# Errors that name the file.

def test_pattern_matching_nothing(tmp_path):
  source = corpus_sources.jsonl_source(str(tmp_path / "nothing-*.jsonl"))
  with pytest.raises(FileNotFoundError, match="no file matches.*nothing-"):
    texts(source)


def test_missing_split(tmp_path):
  write(tmp_path / "a.txt", "x\n")
  source = corpus_sources.text_files_source(str(tmp_path / "a.txt"), holdout_every=None)
  with pytest.raises(ValueError, match="no split 'validation'.*{split}"):
    texts(source, "validation")


def test_train_only_corpus_holds_out_a_hashed_validation_slice(tmp_path):
  """Without a {split} pattern, validation is the documents whose FarmHash fingerprint
  (`tf.strings.to_hash_bucket_fast`, TF's documented function) is 0 mod 100; train is the rest,
  the same on every read whatever the file order."""
  docs = [f"document number {i} about {i % 7} things" for i in range(3000)]
  write(tmp_path / "a.txt", "\n".join(docs[:1500]) + "\n")
  write(tmp_path / "b.txt", "\n".join(docs[1500:]) + "\n")
  source = corpus_sources.text_files_source(str(tmp_path / "*.txt"))
  expected = {d for d in docs if int(tf.strings.to_hash_bucket_fast(d, 100)) == 0}
  validation, train = texts(source, "validation"), texts(source, "train")
  assert set(validation) == expected and 10 <= len(validation) <= 60  # ~1% of 3000
  assert sorted(validation + train) == sorted(docs)
  assert texts(source, "validation") == validation


@pytest.mark.parametrize("make_source", [
    lambda p: corpus_sources.text_files_source(p),
    lambda p: corpus_sources.jsonl_source(p),
    lambda p: corpus_sources.tfrecord_source(p),
])
def test_empty_file_is_named(tmp_path, make_source):
  path = write(tmp_path / "empty.data", "")
  with pytest.raises(ValueError, match=f"{path} is empty"):
    texts(make_source(path))


def test_jsonl_errors_name_file_and_line(tmp_path):
  bad_json = write(tmp_path / "bad.jsonl", '{"text": "fine"}\n{"text": oops}\n')
  with pytest.raises(Exception, match=r"bad\.jsonl:2: not valid JSON"):
    texts(corpus_sources.jsonl_source(bad_json))
  no_field = write(tmp_path / "nofield.jsonl", '{"body": "x"}\n')
  with pytest.raises(ValueError,
                     match=r"nofield\.jsonl:1: no text field 'text' \(found \['body'\]\)"):
    texts(corpus_sources.jsonl_source(no_field))


def test_tfrecord_errors_name_the_file(tmp_path):
  other_feature = write_tfrecord(tmp_path / "other.tfrecord", DOCS, feature="body")
  with pytest.raises(ValueError, match=r"other\.tfrecord has no bytes feature 'text'.*body"):
    texts(corpus_sources.tfrecord_source(other_feature))
  not_tfrecord = write(tmp_path / "junk.tfrecord", b"this is not a tfrecord file at all")
  with pytest.raises(ValueError, match=r"junk\.tfrecord is not a readable TFRecord"):
    texts(corpus_sources.tfrecord_source(not_tfrecord))


@pytest.mark.parametrize("spec", ["c4", "zip:/a/b", "jsonl:", "tfds"])
def test_bad_spec(spec):
  with pytest.raises(ValueError, match="bad corpus spec"):
    corpus_sources.source_from_spec(spec)


def test_text_files_per_must_be_line_or_file():
  with pytest.raises(ValueError, match="'line' or 'file'"):
    corpus_sources.text_files_source("x", per="paragraph")


# ------------------------------------------------------------------------------------------------
# Registering UL2 tasks and mixtures over a corpus.

def test_register_ul2_task_over_jsonl_files(tmp_path):
  docs = world.corpus_documents("train", num_documents=300)
  write(tmp_path / "train.jsonl", "".join(json.dumps({"text": d}) + "\n" for d in docs))
  task = ul2_tasks.register_ul2_task(
      "test_jsonl_ul2r", f"jsonl:{tmp_path}/{{split}}.jsonl", "UL2R",
      inputs_length=128, targets_length=128, overwrite=True)
  examples = list(task.get_dataset(None, split="train", shuffle=False, seed=0).as_numpy_iterator())
  assert len(examples) > 50
  names = {d.name for d in denoisers.ul2r_preset().denoisers}
  assert {e["denoiser"].decode() for e in examples} == names
  assert all(len(e["inputs"]) + len(e["targets"]) <= 256 for e in examples)
  assert ul2_tasks.task_mixture("test_jsonl_ul2r").inputs_length == 128
  with pytest.raises(ValueError, match="already registered"):
    ul2_tasks.register_ul2_task("test_jsonl_ul2r", "demo")


def test_register_ul2_mixture_over_two_corpora_samples_at_their_rates(tmp_path, vocabulary):
  """3:1 between the (ASCII) demo corpus and a file corpus of "§" words (byte-fallback tokens the
  demo corpus never has): examples holding them must be 1/4 (within 4 binomial sigma)."""
  write(tmp_path / "a.txt", "\n".join(" ".join(["§§"] * 40) for _ in range(300)) + "\n")
  mixture = ul2_tasks.register_ul2_mixture(
      "test_two_corpora", {"demo": ("demo", 3.0), "files": (f"text:{tmp_path}/a.txt", 1.0)},
      mixture="UL2R", inputs_length=128, targets_length=128, overwrite=True)
  assert sorted(t.name for t in mixture.tasks) == ["test_two_corpora_demo",
                                                   "test_two_corpora_files"]
  marker = set(vocabulary.encode("x§§")) - set(vocabulary.encode("x"))  # the "§" byte pieces
  ds = mixture.get_dataset({"inputs": 128, "targets": 128}, split="train", shuffle=False, seed=0)
  n = 600
  from_files = sum(bool(marker & set(ex["inputs"].tolist() + ex["targets"].tolist()))
                   for ex in ds.take(n).as_numpy_iterator())
  sigma = math.sqrt(n * 0.25 * 0.75)
  assert abs(from_files - n / 4) < 4 * sigma, from_files