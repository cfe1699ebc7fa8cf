#!/usr/bin/env bash
# Sets up, builds, and runs the main job on the bundled MNIST digit classifier: convert the ONNX
# model into a graph, describe it, classify the bundled example images, and explain them with
# SGLRP, LRP and CLRP (relevance maps, heatmaps, reports). Outputs go to out/demo/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
cargo build --release --locked
bin=target/release/lrp-graph
out=out/demo
mkdir -p "$out"
"$bin" convert graphs/mnist/mnist_cnn.onnx -o "$out/mnist_cnn.ron" \
  --preprocess scale=1/255 --labels graphs/mnist/labels.txt
"$bin" inspect "$out/mnist_cnn.ron"
"$bin" predict "$out/mnist_cnn.ron" --input graphs/mnist/examples --top 2 --logits "$out/logits.npy"
"$bin" inspect "$out/mnist_cnn.ron" --method sglrp
# Three methods in one run, each in its own folder; pixels are scaled to [0, 1]: the bounds of
# the first layer's z^B rule. Heatmaps, overlays, one captioned grid per method, a gallery.
"$bin" explain "$out/mnist_cnn.ron" --input graphs/mnist/examples --method sglrp,lrp,clrp \
  --low 0 --high 1 --overlay --grid 5 --batch-size 10 --html --out "$out"
echo "demo: outputs in $out/ (heatmaps: $out/sglrp/*.png, $out/lrp/*.png, $out/clrp/*.png;"
echo "      grids: $out/*/grid-000000.png; gallery: $out/index.html)"
