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
WORK=${LRP_BENCH_DIR:-target/cli-bench}
if [ -n "${LRP_BENCH_BIN_DIR:-}" ]; then
  BIN=$LRP_BENCH_BIN_DIR/lrp-graph
  MODEL=$LRP_BENCH_BIN_DIR/bench_model
else
  cargo build --release --quiet --bin lrp-graph --example bench_model
  BIN=target/release/lrp-graph
  MODEL=target/release/examples/bench_model
fi
mkdir -p "$WORK"
[ -f "$WORK/vgg16.onnx" ] || "$MODEL" "$WORK" "$BATCH" >/dev/null
[ -f "$WORK/batch$BATCH.npy" ] && [ -f "$WORK/bounds.txt" ] || "$MODEL" "$WORK" "$BATCH" >/dev/null
{ read -r LOW; read -r HIGH; } < "$WORK/bounds.txt"
[ -f "$WORK/vgg16.ron" ] || "$BIN" convert "$WORK/vgg16.onnx" -o "$WORK/vgg16.ron" --no-check >/dev/null

# median wall seconds and max peak RSS (MiB) of REPS runs of a command
measure() {
  local times=() rss=0
  for _ in $(seq "$REPS"); do
    local out
    /usr/bin/time -o "$WORK/time.txt" -f "%e %M" "$@" >/dev/null 2>&1
    out=$(tail -1 "$WORK/time.txt")
    times+=("${out% *}")
    local r=$(( ${out#* } / 1024 ))
    (( r > rss )) && rss=$r
  done
  local med
  med=$(printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  echo "$med $rss"
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
