"""The tasks used the way upstream t5x uses them: gin parsed and locked, `import ul2flan_tasks`
in the gin file, the model's vocabulary bound in gin. Each check runs in a fresh interpreter, as
t5x's `train.py` would, with a stand-in for `models.DecoderOnlyModel.vocabulary`.
"""

import subprocess
import sys
import textwrap

from helpers import REPO_ROOT

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


def _run(code: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=300)


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
