#!/usr/bin/env bash
# Ours and the peers in one run, as the speed issue compares them: cold processes of
# `lrp-graph predict` and `lrp-graph explain --method M` on the bench's VGG16-shaped graph, and
# the peers' scripts (Zennit's EpsilonPlus on torchvision's VGG16, iNNvestigate's
# `sequential_preset_a_flat` on tf.keras's VGG16, random weights, the same batch and threads),
# which report their set-up (imports, model), first call and warm call (median of 2 more). A
# peer's "fresh process" figure is its set-up plus its first call: what one batch costs a user in
# a new Python process. Every round runs each command once, in turn; the table gives medians over
# the rounds and the ratios.
#
#   ZENNIT_PYTHON=/opt/fixenv/bin/python INNVESTIGATE_PYTHON=/opt/innvenv/bin/python \
#     benches/side_by_side.sh [BATCH] [ROUNDS] [THREADS]
#
# A peer whose interpreter is not set is left out. The interpreters need torch, torchvision and
# zennit (tests/fixtures/requirements.txt), and `tensorflow-cpu==2.14.*` with
# `innvestigate==2.1.2`. Needs scripts/setup.sh to have run; LRP_BENCH_BIN_DIR and
# LRP_BENCH_PAUSE (seconds before each of our runs) as for benches/cli_cold.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
BATCH=${1:-8}
ROUNDS=${2:-3}
THREADS=${3:-$(nproc)}
METHODS=(lrp-epsilon sglrp epsilon-plus lrp-a)
PAUSE=${LRP_BENCH_PAUSE:-0}
# shellcheck source=benches/cold_setup.sh
. benches/cold_setup.sh
LOG=$WORK/side_by_side.log
: > "$LOG"

# The number after "KEY": in the JSON file FILE.
json_number() { grep -o "\"$1\": [0-9.]*" "$2" | grep -o '[0-9.]*$'; }

peer() {
  local name=$1 python=$2 script=$3
  shift 3
  [ -n "$python" ] || return 0
  local json=$WORK/$name.json t r
  read -r t r < <(run_once sh -c '"$@" > "$0"' "$json" "$python" "$script" \
    --batch "$BATCH" --threads "$THREADS" --reps 2 "$@")
  if ! grep -q warm_call_s "$json"; then
    echo "$name: $script failed (run it by hand to see why)" >&2
    exit 1
  fi
  local setup first warm
  setup=$(json_number setup_s "$json")
  first=$(json_number first_call_s "$json")
  warm=$(json_number warm_call_s "$json")
  echo "$name $(awk -v a="$setup" -v b="$first" 'BEGIN {print a + b}') $r $warm" >> "$LOG"
}

for round in $(seq "$ROUNDS"); do
  echo "round $round of $ROUNDS" >&2
  sleep "$PAUSE"
  read -r t r < <(run_once "$BIN" predict "$WORK/vgg16.ron" --input "$WORK/batch$BATCH.npy" \
    --threads "$THREADS")
  echo "predict $t $r" >> "$LOG"
  for m in "${METHODS[@]}"; do
    rm -rf "$WORK/out"
    sleep "$PAUSE"
    read -r t r < <(run_once "$BIN" explain "$WORK/vgg16.ron" --input "$WORK/batch$BATCH.npy" \
      --method "$m" --threads "$THREADS" --low "$LOW" --high "$HIGH" --out "$WORK/out")
    echo "$m $t $r" >> "$LOG"
  done
  peer zennit "${ZENNIT_PYTHON:-}" benches/peers/zennit_epsilon_plus.py --model vgg16
  peer innvestigate "${INNVESTIGATE_PYTHON:-}" benches/peers/innvestigate_preset_a_flat.py
done

# The median of column COL of NAME's lines: 2 the fresh process's seconds (ours: its wall time;
# a peer's: set-up + first call), 3 peak RSS MiB (a peer's whole process), 4 a peer's warm call.
col() { awk -v n="$1" -v c="$2" '$1 == n {print $c}' "$LOG" | median; }

P=$(col predict 2)
echo "VGG16 (random weights), batch $BATCH × 224², $THREADS threads; medians of $ROUNDS rounds"
echo
echo "| command | one batch in a fresh process, s | peak RSS MiB | warm call s | ratio |"
echo "| --- | ---: | ---: | ---: | --- |"
echo "| lrp-graph predict | $P | $(col predict 3) | | 1.0× |"
for m in "${METHODS[@]}"; do
  echo "| lrp-graph explain --method $m | $(col "$m" 2) | $(col "$m" 3) | | $(ratio "$(col "$m" 2)" "$P")× predict |"
done
row() {
  local name=$1 label=$2 ours=$3
  grep -q "^$name " "$LOG" || return 0
  local t warm o
  t=$(col "$name" 2)
  warm=$(col "$name" 4)
  o=$(col "$ours" 2)
  echo "| $label | $t | $(col "$name" 3) | $warm | fresh: $(ratio "$t" "$o")× our $ours; its warm call: $(ratio "$warm" "$o")× our fresh $ours process |"
}
row zennit "Zennit EpsilonPlus (Python process)" epsilon-plus
row innvestigate "iNNvestigate preset A flat (Python process)" lrp-a
