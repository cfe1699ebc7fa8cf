# Sourced by benches/cli_cold.sh and benches/side_by_side.sh (from the repository root, with
# BATCH set): builds or finds the `lrp-graph` and `bench_model` binaries (LRP_BENCH_BIN_DIR, if
# set, names a folder holding prebuilt ones, for a machine without cargo), writes the bench's
# VGG16-shaped graph (seeded random weights, 224x224), a batch of BATCH normalised images and
# their box (the z^B bounds) to WORK (LRP_BENCH_DIR, default target/cli-bench), and defines
# `run_once`, `median` and `ratio`. Sets BIN, WORK, LOW and HIGH.
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

# Runs a command once, its output discarded; prints its wall seconds and peak RSS (MiB).
run_once() {
  /usr/bin/time -o "$WORK/time.txt" -f "%e %M" "$@" >/dev/null 2>&1
  local out
  out=$(tail -1 "$WORK/time.txt")
  echo "${out% *} $(( ${out#* } / 1024 ))"
}

# A / B with two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }

# The median of the numbers on standard input.
median() {
  sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}

# One untimed run first: the binaries, ONNX Runtime and the weights are then in the page cache,
# as for every later run ("cold" here means a fresh process, not a cold disk cache).
run_once "$BIN" predict "$WORK/vgg16.ron" --input "$WORK/batch$BATCH.npy" >/dev/null
