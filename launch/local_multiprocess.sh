#!/usr/bin/env bash
# Simulate a 2-host run on one machine (CPU, gloo collectives, 2 devices per process).
#   launch/local_multiprocess.sh MODEL_DIR [extra ul2flan train args...]
# Arguments reach both processes' `ul2flan train` as given ("$@": quoted bindings stay quoted).
set -euo pipefail
MODEL_DIR=$1; shift
PORT=${PORT:-23456}
UL2FLAN=${UL2FLAN:-.venv/bin/ul2flan}
pids=()
for i in 0 1; do
  XLA_FLAGS=--xla_force_host_platform_device_count=2 "$UL2FLAN" train \
    --gin_file=gin_configs/models/tiny.gin --gin_file=gin_configs/runs/pretrain.gin \
    --model_dir="$MODEL_DIR" --coordinator_address=127.0.0.1:$PORT --num_processes=2 \
    --process_id=$i --cpu_collectives=gloo "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
