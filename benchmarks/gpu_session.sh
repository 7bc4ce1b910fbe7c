#!/usr/bin/env bash
# Issue 12's accelerator checks as one command, for a session lent an NVIDIA GPU (README,
# "Accelerators"). Results and logs go to ${OUT:-gpu_results}/:
#   env.txt              GPU, driver, jax version
#   attention_check.txt  cuDNN vs XLA attention: logits and gradients, bf16 (causal, packed,
#                        prefix-LM, sliding window, scanned Gemma pattern)
#   train_mfu.txt/.jsonl palm_1b (gpu_1b) tokens/s, MFU, peak memory: xla vs cudnn attention,
#                        T = 2048 and 8192, remat none / dots_with_no_batch_dims / full
#   base_stage.txt       the pipeline's first stage (`ul2flan train`, tiny model) on the GPU, when
#                        seqio and TensorFlow are installed
# Needs jax with CUDA (jax[cuda12]==0.10.2 as pinned here, or a newer jax the machine has), flax,
# optax and gin-config; wheels in .whl/ are installed first when gin is missing.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
if ! $PY -c "import gin" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  $PY -c "import jax; print('jax', jax.__version__, jax.devices())"; } 2>&1 | tee "$OUT/env.txt"
$PY benchmarks/attention_check.py 2>&1 | tee "$OUT/attention_check.txt"
$PY benchmarks/train_mfu.py --shape=gpu_1b --attention=xla,cudnn --seq=2048,8192 \
  --remat=none,dots_with_no_batch_dims,full --steps=3 --json="$OUT/train_mfu.jsonl" \
  --budget_s="${BUDGET_S:-360}" 2>&1 | tee "$OUT/train_mfu.txt"
if $PY -c "import seqio, tensorflow" 2>/dev/null; then
  $PY -m ul2flan train --gin_file=gin_configs/models/tiny.gin \
    --gin_file=gin_configs/runs/pretrain.gin --model_dir="$OUT/base_stage" \
    --gin.TRAIN_STEPS=20 --gin.BATCH_SIZE=16 --gin.EVAL_PERIOD=0 2>&1 | tail -20 \
    | tee "$OUT/base_stage.txt"
else
  echo "seqio / tensorflow missing: the pipeline's base stage was not run" | tee "$OUT/base_stage.txt"
fi
