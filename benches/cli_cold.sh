#!/usr/bin/env bash
# Whole-process timings of the CLI, as a user runs it: `predict` and `explain --method M` on the
# benchmark's VGG16-shaped graph (seeded random weights, 224x224) and a batch of normalised
# images (the z^B bounds are the images' box), each a fresh process, median of REPS runs;
# prints a markdown table with the ratios and each command's peak RSS.
#
#   benches/cli_cold.sh [BATCH] [REPS] [METHODS] [THREADS]
#   benches/cli_cold.sh 8 3 lrp-epsilon,sglrp,sglrp-seq-b,epsilon-plus,lrp-a
#
# THREADS (default: all cores) is passed as --threads. Needs scripts/setup.sh to have run.
# LRP_BENCH_BIN_DIR, if set, names a folder holding prebuilt `lrp-graph` and `bench_model`
# binaries (for a machine without cargo); otherwise both are built here.
set -euo pipefail
cd "$(dirname "$0")/.."
BATCH=${1:-8}
REPS=${2:-3}
METHODS=${3:-lrp-epsilon,sglrp,sglrp-seq-b,epsilon-plus,lrp-a}
THREADS=${4:-$(nproc)}
# shellcheck source=benches/cold_setup.sh
. benches/cold_setup.sh

# median wall seconds and max peak RSS (MiB) of REPS runs of a command
measure() {
  local times=() rss=0
  for _ in $(seq "$REPS"); do
    local t r
    read -r t r < <(run_once "$@")
    times+=("$t")
    (( r > rss )) && rss=$r
  done
  echo "$(printf '%s\n' "${times[@]}" | median) $rss"
}

read -r P_T P_RSS < <(measure "$BIN" predict "$WORK/vgg16.ron" --input "$WORK/batch$BATCH.npy" --threads "$THREADS")
echo "VGG16 (seeded random weights) batch $BATCH x 224², $THREADS threads, median of $REPS fresh processes"
echo
echo "| command | wall s | ratio to predict | peak RSS MiB |"
echo "| --- | ---: | ---: | ---: |"
echo "| predict | $P_T | 1.0× | $P_RSS |"
IFS=, read -ra MS <<< "$METHODS"
for m in "${MS[@]}"; do
  rm -rf "$WORK/out"
  read -r T RSS < <(measure "$BIN" explain "$WORK/vgg16.ron" --input "$WORK/batch$BATCH.npy" \
    --method "$m" --threads "$THREADS" --low "$LOW" --high "$HIGH" --out "$WORK/out")
  echo "| explain --method $m | $T | $(awk -v a="$T" -v b="$P_T" 'BEGIN {printf "%.1f", a/b}')× | $RSS |"
done
