"""The compiled train step's HLO instructions, names and source metadata stripped, so the programs
two source trees compile for one shape can be diffed: identical instructions run identically.

  python benchmarks/step_hlo.py --shape=cpu_512x8 --out=/tmp/new.txt
  PYTHONPATH=/path/to/other/tree python benchmarks/step_hlo.py --shape=cpu_512x8 --out=/tmp/old.txt
  diff /tmp/old.txt /tmp/new.txt

Uses only DecoderConfig and StepBuilder, so it also runs against older trees.
"""

from __future__ import annotations

import argparse
import re

import jax
import numpy as np

from ul2flan import partitioning
from ul2flan.model.config import DecoderConfig
from ul2flan.training import optim, steps

SHAPES = {  # as in train_mfu.py (kept separate: that script needs the current tree)
    "cpu_512x8": (dict(vocab_size=768, d_model=512, num_layers=8, num_heads=8, num_kv_heads=1,
                       head_dim=64, mlp_dim=2048, dtype="float32"), 512, 8),
    "tiny": (dict(vocab_size=768, d_model=256, num_layers=4, num_heads=4, num_kv_heads=1,
                  head_dim=64, mlp_dim=1024, dtype="float32"), 256, 16),
}


def normalized_hlo(shape: str) -> list[str]:
  kwargs, length, batch = SHAPES[shape]
  cfg = DecoderConfig(**kwargs)
  part = partitioning.Partitioner({"data": -1})
  sched = optim.make_schedule(kind="constant", base_learning_rate=1e-3, warmup_steps=0)
  builder = steps.StepBuilder(cfg, part, optim.make_optimizer(sched), sched)
  features = ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
              "decoder_segment_ids", "decoder_positions")
  step = builder.jit_train_step({k: (batch, length) for k in features})
  state = steps.TrainState(step=jax.ShapeDtypeStruct((), np.int32),
                           params=builder.abstract_params, opt_state=builder.abstract_opt_state)
  batch_spec = {k: jax.ShapeDtypeStruct((batch, length), np.int32) for k in features}
  with part.activation_context():
    text = step.lower(state, batch_spec).compile().as_text()
  lines = []
  for line in text.splitlines():
    if " = " not in line:
      continue
    line = re.sub(r",? ?metadata=\{[^}]*\}", "", line)
    line = re.sub(r",? ?stack_frame_id=\d+", "", line)
    lines.append(re.sub(r"%[\w.-]+", "%x", line))
  return lines


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--shape", choices=sorted(SHAPES), default="cpu_512x8")
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  lines = normalized_hlo(args.shape)
  with open(args.out, "w") as f:
    f.write("\n".join(lines) + "\n")
  print(f"{len(lines)} instructions -> {args.out}")


if __name__ == "__main__":
  main()
