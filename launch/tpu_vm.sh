#!/usr/bin/env bash
# Launch a ul2flan stage on a Cloud TPU VM slice: every worker runs the same command; JAX finds
# the other hosts through the TPU metadata, so no coordinator flags are needed.
#   launch/tpu_vm.sh TPU_NAME ZONE MODEL_DIR GIN_FILE [GIN_FILE ...] -- [--gin.X=Y ...]
# Arguments reach `ul2flan train` on every worker exactly as given here, e.g.
#   launch/tpu_vm.sh my-v4-64 us-central2-b gs://bucket/u-palm-8b gin_configs/models/palm_8b.gin \
#     gin_configs/runs/ul2r.gin -- --gin.INITIAL_CHECKPOINT_PATH="'gs://bucket/palm-8b'" \
#     --gin.TASK_FEATURE_LENGTHS="{'inputs': 1024, 'targets': 1024}"
# FSDP=4 MODEL=2 set MESH_SHAPE's fsdp / model axes (a --gin.MESH_SHAPE binding wins over them).
# REPO: the checkout on the workers, relative to the home directory (default ul2flan).
set -euo pipefail
TPU_NAME=$1; ZONE=$2; MODEL_DIR=$3; shift 3
ARGS=(); while [[ $# -gt 0 && $1 != "--" ]]; do ARGS+=("--gin_file=$1"); shift; done
[[ ${1:-} == "--" ]] && shift
if [[ -n ${FSDP:-} || -n ${MODEL:-} ]]; then
  ARGS+=("--gin.MESH_SHAPE={'data': -1, 'fsdp': ${FSDP:-1}, 'model': ${MODEL:-1}}")
fi
ARGS+=("--model_dir=$MODEL_DIR" "$@")
# gcloud passes one command string to each worker's shell: quote every word for it (%q), so the
# worker's shell rebuilds exactly these arguments.
TRAIN=$(printf ' %q' .venv/bin/ul2flan train "${ARGS[@]}")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="set -e
cd $(printf '%q' "${REPO:-ul2flan}")
make install >/dev/null
.venv/bin/pip install -q 'jax[tpu]==0.10.2'
exec$TRAIN"
