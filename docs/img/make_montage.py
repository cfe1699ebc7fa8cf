#!/usr/bin/env python3
"""Build docs/img/mnist_methods.png: LRP, CLRP and SGLRP on three bundled two-digit images.

Run from the repository root after `cargo build --release` (needs Pillow):

    python docs/img/make_montage.py [--bin target/release/lrp-graph]

It converts graphs/mnist/mnist_cnn.onnx (preprocessing scale=1/255, labels) into a temporary
folder, runs `lrp-graph explain --method M --low 0 --high 1` (the input range, for z^B) on each
image for its top class, and lays out the input and the heatmaps the binary wrote (seismic:
red positive, blue negative, white 0, each map scaled to its own max |R|), enlarged x4 with
nearest neighbour. Rows: images; columns: input, LRP, CLRP, SGLRP. A caption row names the
columns and each row's label names the digits and the explained (top) class, drawn with
Pillow's built-in font.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[2]
IMAGES = ["pair_3_8.png", "pair_1_7.png", "pair_4_9.png"]  # from graphs/mnist/examples/
METHODS = [("lrp", "LRP"), ("clrp", "CLRP"), ("sglrp", "SGLRP")]
ZOOM = 4
GAP = 8
LABEL_W = 92
HEADER_H = 24
H, W = 28, 56


def run(cmd: list[str]) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}{res.stderr}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", type=Path, default=REPO / "target" / "release" / "lrp-graph")
    ap.add_argument("-o", "--out", type=Path, default=REPO / "docs" / "img" / "mnist_methods.png")
    args = ap.parse_args()
    if not args.bin.is_file():
        raise SystemExit(f"{args.bin} not found: run `cargo build --release` first")
    ex_dir = REPO / "graphs" / "mnist" / "examples"

    cells: list[list[Image.Image]] = []
    labels: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = tmp / "inputs"
        inputs.mkdir()
        for name in IMAGES:
            (inputs / name).write_bytes((ex_dir / name).read_bytes())
        graph = tmp / "mnist.ron"
        run([str(args.bin), "convert", str(REPO / "graphs/mnist/mnist_cnn.onnx"), "-o", str(graph),
             "--preprocess", "scale=1/255", "--labels", str(REPO / "graphs/mnist/labels.txt")])
        maps: dict[str, dict[str, Image.Image]] = {}
        targets: dict[str, int] = {}
        for method, _ in METHODS:
            out = tmp / method
            run([str(args.bin), "explain", str(graph), "--input", str(inputs), "--method", method,
                 "--low", "0", "--high", "1", "--zoom", "1", "-o", str(out)])
            lines = (out / "manifest.jsonl").read_text().splitlines()
            for rec in map(json.loads, lines):
                name = Path(rec["source"]).name
                t = int(rec["target"])
                assert targets.setdefault(name, t) == t, (name, method)
                img = Image.open(out / rec["methods"][method]["heatmap"]).convert("RGB")
                maps.setdefault(name, {})[method] = img
        for name in IMAGES:
            grey = Image.open(ex_dir / name).convert("RGB")
            row = [grey] + [maps[name][m] for m, _ in METHODS]
            cells.append([c.resize((W * ZOOM, H * ZOOM), Image.NEAREST) for c in row])
            left, right = Path(name).stem.split("_")[1:3]
            labels.append(f"{left} | {right}\ntarget {targets[name]}")

    cw, ch = W * ZOOM, H * ZOOM
    ncol = 1 + len(METHODS)
    width = LABEL_W + ncol * cw + (ncol + 1) * GAP
    height = HEADER_H + len(cells) * ch + (len(cells) + 1) * GAP
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=15)
    headers = ["input"] + [title for _, title in METHODS]
    for c, text in enumerate(headers):
        x = LABEL_W + GAP + c * (cw + GAP) + cw // 2
        draw.text((x, HEADER_H // 2 + 2), text, fill=(0, 0, 0), font=font, anchor="mm")
    for r, (row, label) in enumerate(zip(cells, labels)):
        y = HEADER_H + GAP + r * (ch + GAP)
        draw.multiline_text((GAP, y + ch // 2), label, fill=(0, 0, 0), font=font, anchor="lm",
                            spacing=4)
        for c, img in enumerate(row):
            x = LABEL_W + GAP + c * (cw + GAP)
            canvas.paste(img, (x, y))
            # thin frame so white (zero) heatmap borders stay visible on the white page
            draw.rectangle((x - 1, y - 1, x + cw, y + ch), outline=(160, 160, 160))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out, optimize=True)  # lossless RGB; about 36 KB
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({width}x{height}, {size} bytes); targets: "
          + ", ".join(f"{n}: {targets[n]}" for n in IMAGES))
    if size >= 100 * 1024:
        print("warning: the montage is 100 KB or larger", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
