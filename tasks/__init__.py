"""seqio registrations of ul2flan. Importing this module registers every task and mixture, and
the feature converter that upstream t5x names to train on them.

Installed as `ul2flan_tasks`. From upstream t5x, import it in the gin file (t5x's own advice for
task modules that use gin), before or after the vocabulary bindings — tasks read the vocabulary
and lengths when they are used, not when they are registered — and name the converter, whose
prefix-LM rows hold UL2R's full-row examples (`ul2flan_tasks.converters`):

    import ul2flan_tasks
    get_vocabulary.kind = 'demo'          # or 'sentencepiece' / 'hf' with get_vocabulary.path
    models.DecoderOnlyModel.feature_converter_cls = @ul2flan_tasks.FullRowDecoderFeatureConverter

See README.md ("Using the tasks from upstream t5x").
"""

from . import lm  # noqa: F401
from . import ul2r  # noqa: F401
from . import flan  # noqa: F401
from .converters import FullRowDecoderFeatureConverter  # noqa: F401  (gin: see converters.py)
