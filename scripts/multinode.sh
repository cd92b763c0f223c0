#!/usr/bin/env bash
# Template: one recipe over several machines. Run the same command on every node, changing NODE_RANK:
#
#   NNODES=2 NODE_RANK=0 MAIN_IP=10.0.0.1 NPROC=8 STRATEGY=zero3 bash scripts/multinode.sh sft recipes/sft/X.yaml
#   NNODES=2 NODE_RANK=1 MAIN_IP=10.0.0.1 NPROC=8 STRATEGY=zero3 bash scripts/multinode.sh sft recipes/sft/X.yaml
#
# Every node needs the same checkout, the same environment (scripts/setup.sh) and the data at the same
# paths; train.output_dir should be on shared storage (rank 0 writes it). MAIN_IP must be reachable from
# all nodes on MAIN_PORT. On a SLURM cluster, set NODE_RANK=$SLURM_NODEID and MAIN_IP to the first host of
# $(scontrol show hostnames "$SLURM_JOB_NODELIST").
set -euo pipefail
COMMAND=${1:?usage: multinode.sh COMMAND RECIPE [llmtune arguments]}
RECIPE=${2:?usage: multinode.sh COMMAND RECIPE [llmtune arguments]}
shift 2
cd "$(dirname "$0")/.."
: "${NNODES:?set NNODES}" "${NODE_RANK:?set NODE_RANK}" "${MAIN_IP:?set MAIN_IP}"
exec .venv/bin/llmtune "$COMMAND" --recipe "$RECIPE" \
  --nnodes "$NNODES" --node-rank "$NODE_RANK" --main-process-ip "$MAIN_IP" \
  --main-process-port "${MAIN_PORT:-29500}" --nproc "${NPROC:-1}" --strategy "${STRATEGY:-ddp}" "$@"
