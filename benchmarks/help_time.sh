#!/usr/bin/env bash
# Wall time of `llmtune --help` and `llmtune pretrain --help` (median of 10 runs, warm file cache).
#   bash benchmarks/help_time.sh
set -euo pipefail
cd "$(dirname "$0")/.."
for args in "--help" "pretrain --help"; do
  .venv/bin/llmtune $args >/dev/null
  times=()
  for _ in $(seq 10); do
    start=$(date +%s.%N); .venv/bin/llmtune $args >/dev/null; end=$(date +%s.%N)
    times+=("$(echo "$end - $start" | bc)")
  done
  median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n 5,6p | awk '{s+=$1} END {printf "%.3f", s/2}')
  echo "llmtune $args: median ${median} s over 10 runs"
done
