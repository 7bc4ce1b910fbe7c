"""Imports every module that defines gin configurables, so gin files can name them when parsed.

Commands import this before parsing gin (classic gin needs registration first). Library code never
imports it: it sits at the top of the import graph.
"""

# pylint: disable=unused-import
from ul2flan import checkpoints  # noqa: F401
from ul2flan import partitioning  # noqa: F401
from ul2flan import vocabularies  # noqa: F401
from ul2flan.demo import corpus  # noqa: F401
from ul2flan.demo import evaluate as demo_evaluate  # noqa: F401  (registers the "demo" evaluator)
from ul2flan.flan import chat  # noqa: F401
from ul2flan.flan import exports  # noqa: F401
from ul2flan.flan import mixtures  # noqa: F401
from ul2flan.flan import sources  # noqa: F401
from ul2flan.model import config  # noqa: F401
from ul2flan.pipeline import benchmark_eval  # noqa: F401  (registers "benchmarks")
from ul2flan.pipeline import settings as pipeline_settings  # noqa: F401
from ul2flan.pipeline import text_infilling  # noqa: F401  (registers "text_infilling")
from ul2flan.training import data  # noqa: F401
from ul2flan.training import optim  # noqa: F401
from ul2flan.training import settings as training_settings  # noqa: F401
from ul2flan.training import trainer  # noqa: F401
from ul2flan.ul2 import denoisers  # noqa: F401
from ul2flan.ul2 import sources as ul2_sources  # noqa: F401
from ul2flan.ul2 import tasks  # noqa: F401
