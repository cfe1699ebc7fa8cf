#!/usr/bin/env bash
# Whole-process timings of the CLI, as a user runs it: `predict` and `explain --method M` on the
# benchmark's VGG16-shaped graph (seeded random weights, 224x224) and a batch of normalised
# images (the z^B bounds are the images' box), each a fresh process; REPS rounds, each running
# every command once (interleaved, so that a slow minute of the machine falls on all of them);
# prints a markdown table with the medians, the ratios to predict and each command's peak RSS.
#
#   benches/cli_cold.sh [BATCH] [REPS] [METHODS] [THREADS]
#   benches/cli_cold.sh 8 3 lrp-epsilon,sglrp,sglrp-seq-b,epsilon-plus,lrp-a
#   LRP_BENCH_PAUSE=3 LRP_BENCH_BASE=/tmp/old/lrp-graph benches/cli_cold.sh 8 5 lrp-epsilon,sglrp 2
#
# THREADS (default: all cores) is passed as --threads. Needs scripts/setup.sh to have run.
# LRP_BENCH_BIN_DIR, if set, names a folder holding prebuilt `lrp-graph` and `bench_model`
# binaries (for a machine without cargo); otherwise both are built here.
# LRP_BENCH_PAUSE=S sleeps S seconds before every run (default 0, back to back; on a virtual
# machine the spacing changes what fresh memory costs, docs/performance.md).
# LRP_BENCH_BASE=BIN names a second `lrp-graph` binary (an older build, say) that runs right
# after this one's every run, on the same command: the table gets its columns beside.
set -euo pipefail
cd "$(dirname "$0")/.."
BATCH=${1:-8}
REPS=${2:-3}
METHODS=${3:-lrp-epsilon,sglrp,sglrp-seq-b,epsilon-plus,lrp-a}
THREADS=${4:-$(nproc)}
PAUSE=${LRP_BENCH_PAUSE:-0}
BASE=${LRP_BENCH_BASE:-}
# shellcheck source=benches/cold_setup.sh
. benches/cold_setup.sh

bins=("$BIN")
if [ -n "$BASE" ]; then
  [ -x "$BASE" ] || { echo "LRP_BENCH_BASE=$BASE: not an executable" >&2; exit 2; }
  bins+=("$BASE")
fi
IFS=, read -ra MS <<< "$METHODS"
cmds=(predict "${MS[@]}")
declare -A TIMES PEAK
for _ in $(seq "$REPS"); do
  for c in "${cmds[@]}"; do
    for b in "${!bins[@]}"; do
      sleep "$PAUSE"
      if [ "$c" = predict ]; then
        read -r t r < <(run_once "${bins[$b]}" predict "$WORK/vgg16.ron" \
          --input "$WORK/batch$BATCH.npy" --threads "$THREADS")
      else
        rm -rf "$WORK/out"
        read -r t r < <(run_once "${bins[$b]}" explain "$WORK/vgg16.ron" \
          --input "$WORK/batch$BATCH.npy" --method "$c" --threads "$THREADS" \
          --low "$LOW" --high "$HIGH" --out "$WORK/out")
      fi
      TIMES[$b:$c]+="$t "
      (( r > ${PEAK[$b:$c]:-0} )) && PEAK[$b:$c]=$r
    done
  done
done

# median of a key's times
med() { printf '%s\n' ${TIMES[$1]} | median; }

echo "VGG16 (seeded random weights) batch $BATCH x 224², $THREADS threads, median of $REPS fresh processes (rounds interleaved, ${PAUSE} s before each run)"
echo
if [ ${#bins[@]} -eq 1 ]; then
  echo "| command | wall s | ratio to predict | peak RSS MiB |"
  echo "| --- | ---: | ---: | ---: |"
else
  echo "| command | wall s | ratio to predict | peak RSS MiB | base: wall s | base: ratio | base: peak RSS MiB |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
fi
for c in "${cmds[@]}"; do
  name="explain --method $c"
  [ "$c" = predict ] && name=predict
  row="| $name"
  for b in "${!bins[@]}"; do
    t=$(med "$b:$c")
    row+=" | $t | $(ratio "$t" "$(med "$b:predict")")× | ${PEAK[$b:$c]}"
  done
  echo "$row |"
done
