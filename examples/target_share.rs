//! How much of each method's relevance lands on the right digit of a two-digit MNIST image.
//!
//! ```sh
//! cargo run --release --example target_share [-- FOLDER]
//! ```
//!
//! Imports `graphs/mnist/mnist_cnn.onnx` (preprocessing `scale=1/255`), loads every image of
//! FOLDER (default `graphs/mnist/pairs`, written by `tests/fixtures/make_mnist_pairs.py`) as one
//! batch and reads each image's two digits from its file name `pair_<k>_<left>_<right>.png`
//! (left digit in columns 0..28, right digit in columns 28..56). Images whose top class is
//! neither of their digits are left out (and counted).
//!
//! For every method the images are explained twice: for their top class, and for the other digit
//! of the pair (the "second class"). Per image and explanation it computes
//!
//! - the share of positive relevance on the target's half: `Σ_half max(R, 0) / Σ max(R, 0)`;
//! - the share of negative relevance on the other digit's half: `Σ_other min(R, 0) / Σ min(R, 0)`;
//!
//! and prints their means over the images in a markdown table. A share is undefined for a map
//! without positive (or negative) relevance; such maps are left out of that mean and counted in
//! the cell as `(used/total)`. Bounds of the z^B rules: 0..1 (the input range).

use std::error::Error;
use std::path::{Path, PathBuf};

use lrp_graph::engine::{ExplainOptions, Explainer, Explanation, Targets};
use lrp_graph::ir::Preprocess;
use lrp_graph::rules::{Bounds, Registry, SignalNote, presets};
use lrp_graph::runtime::Device;
use ndarray::Axis;

const METHODS: [&str; 7] = [
    "sglrp",
    "lrp",
    "clrp",
    "sglrp-seq-a",
    "sglrp-seq-b",
    "lrp-a",
    "epsilon-plus",
];

/// Width of one half of the canvas.
const HALF: usize = 28;

type Res<T> = Result<T, Box<dyn Error>>;

/// The two digits (left, right) named by `pair_<k>_<left>_<right>.png`.
fn digits_of(path: &Path) -> Res<(usize, usize)> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| format!("{}: no file name", path.display()))?;
    let parts: Vec<&str> = stem.split('_').collect();
    let bad = || format!("{}: expected pair_<k>_<left>_<right>.png", path.display());
    if parts.len() < 3 {
        return Err(bad().into());
    }
    let left: usize = parts[parts.len() - 2].parse().map_err(|_| bad())?;
    let right: usize = parts[parts.len() - 1].parse().map_err(|_| bad())?;
    if left > 9 || right > 9 || left == right {
        return Err(bad().into());
    }
    Ok((left, right))
}

/// Mean of the defined values, with how many were defined.
#[derive(Default, Clone, Copy)]
struct Mean {
    sum: f64,
    n: usize,
}

impl Mean {
    fn add(&mut self, v: Option<f64>) {
        if let Some(v) = v {
            self.sum += v;
            self.n += 1;
        }
    }

    fn cell(&self, total: usize) -> String {
        if self.n == 0 {
            return format!("n/a (0/{total})");
        }
        let m = self.sum / self.n as f64;
        if self.n == total {
            format!("{m:.3}")
        } else {
            format!("{m:.3} ({}/{total})", self.n)
        }
    }
}

/// Positive share on the target half and negative share on the other half of image `i`
/// (`target_left`: the target digit is the left one).
fn shares(ex: &Explanation, i: usize, target_left: bool) -> (Option<f64>, Option<f64>) {
    let map = ex.relevance.index_axis(Axis(0), i);
    let w = *map.shape().last().expect("image map");
    let (mut pos, mut pos_target, mut neg, mut neg_other) = (0f64, 0f64, 0f64, 0f64);
    for (k, &v) in map.iter().enumerate() {
        let v = v as f64;
        let left = (k % w) < HALF;
        let on_target = left == target_left;
        if v > 0.0 {
            pos += v;
            if on_target {
                pos_target += v;
            }
        } else if v < 0.0 {
            neg += v;
            if !on_target {
                neg_other += v;
            }
        }
    }
    (
        (pos > 0.0).then(|| pos_target / pos),
        (neg < 0.0).then(|| neg_other / neg),
    )
}

fn main() -> Res<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let folder = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("graphs/mnist/pairs"));

    let mut graph =
        lrp_graph::import::import_onnx(&root.join("graphs/mnist/mnist_cnn.onnx"))?.graph;
    let pre: Preprocess = "scale=1/255".parse()?;
    graph.set_preprocess(Some(pre))?;
    let (batch, files) = lrp_graph::io::load_input(&folder, graph.input(), None)?;
    let n = batch.shape()[0];
    let digits = files
        .iter()
        .map(|f| digits_of(f))
        .collect::<Res<Vec<_>>>()?;

    let registry = Registry::with_builtins();
    let bounds = Bounds {
        low: vec![0.0],
        high: vec![1.0],
    };
    let mut rows = Vec::new();
    // Decided by the first method's forward pass (the same for all: same graph, same input).
    let mut used: Option<Vec<Option<bool>>> = None;
    let mut notes_lines = Vec::new();
    for method in METHODS {
        let config = presets::preset(method, &registry)?;
        let mut explainer = Explainer::new(graph.clone(), config, &registry, Device::Cpu, None)?;
        let opts = ExplainOptions {
            targets: Targets::Top,
            bounds: Some(bounds.clone()),
            relu: None,
            keep: vec![],
            ..ExplainOptions::default()
        };
        let top = explainer.explain(&batch, &opts)?;
        // Per image: Some(true) top class = left digit, Some(false) = right digit, None = neither.
        let which: Vec<Option<bool>> = (0..n)
            .map(|i| {
                let t = top.targets[i];
                let (l, r) = digits[i];
                if t == l {
                    Some(true)
                } else if t == r {
                    Some(false)
                } else {
                    None
                }
            })
            .collect();
        if let Some(u) = &used {
            assert_eq!(u, &which, "top classes differ between methods");
        }
        let second_targets: Vec<usize> = (0..n)
            .map(|i| {
                let (l, r) = digits[i];
                match which[i] {
                    Some(true) => r,
                    Some(false) => l,
                    None => l, // not counted
                }
            })
            .collect();
        let second = explainer.explain(
            &batch,
            &ExplainOptions {
                targets: Targets::Each(second_targets),
                ..opts.clone()
            },
        )?;
        let mut cells = [Mean::default(); 4];
        let mut note_counts = [[0usize; 2]; 2]; // [top/second][target logit ≤ 0, ΣO = 0]
        for (i, w) in which.iter().enumerate() {
            let Some(top_left) = *w else { continue };
            let (p, q) = shares(&top, i, top_left);
            cells[0].add(p);
            cells[1].add(q);
            let (p, q) = shares(&second, i, !top_left);
            cells[2].add(p);
            cells[3].add(q);
            for (k, ex) in [&top, &second].into_iter().enumerate() {
                for note in &ex.notes[i] {
                    match note {
                        SignalNote::TargetLogitNonPositive => note_counts[k][0] += 1,
                        SignalNote::DualSumZero => note_counts[k][1] += 1,
                    }
                }
            }
        }
        let total = which.iter().filter(|w| w.is_some()).count();
        rows.push(format!(
            "| {method} | {} | {} | {} | {} |",
            cells[0].cell(total),
            cells[1].cell(total),
            cells[2].cell(total),
            cells[3].cell(total)
        ));
        for (k, what) in ["top-class", "second-class"].iter().enumerate() {
            let [zero, dual] = note_counts[k];
            if zero > 0 {
                notes_lines.push(format!(
                    "- {method}, {what} target: {zero} maps all zero (target logit ≤ 0 under head_relu)"
                ));
            }
            if dual > 0 {
                notes_lines.push(format!(
                    "- {method}, {what} target: {dual} maps are the target pass alone (ΣO = 0)"
                ));
            }
        }
        used = Some(which);
    }

    let which = used.expect("at least one method");
    let total = which.iter().filter(|w| w.is_some()).count();
    let top_left = which.iter().filter(|w| **w == Some(true)).count();
    // Reference: the share of ink (input value) on each half, for the same images.
    let (mut ink_top, mut ink_second) = (Mean::default(), Mean::default());
    for (i, w) in which.iter().enumerate() {
        let Some(left) = *w else { continue };
        let x = batch.index_axis(Axis(0), i);
        let width = *x.shape().last().expect("image");
        let (mut all, mut on_left) = (0f64, 0f64);
        for (k, &v) in x.iter().enumerate() {
            all += v as f64;
            if k % width < HALF {
                on_left += v as f64;
            }
        }
        let l = on_left / all;
        ink_top.add(Some(if left { l } else { 1.0 - l }));
        ink_second.add(Some(if left { 1.0 - l } else { l }));
    }

    println!(
        "Two-digit MNIST test canvases in {}: {n} images, {total} used \
         ({} whose top class is neither digit left out; top class = left digit in {top_left}, \
         right digit in {}).",
        folder.display(),
        n - total,
        total - top_left
    );
    println!("z^B bounds 0..1; shares averaged over the used images.");
    println!();
    println!(
        "| method | top-class target: positive share on target digit | negative share on other digit \
         | second-class target: positive share on target digit | negative share on other digit |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for r in &rows {
        println!("{r}");
    }
    println!();
    println!(
        "Reference: share of the input's ink on the target digit's half: {} (top class), {} (second class).",
        ink_top.cell(total),
        ink_second.cell(total)
    );
    println!(
        "`(a/b)`: the share was defined (the map had relevance of that sign) for a of the b images."
    );
    if !notes_lines.is_empty() {
        println!("Notes:");
        for l in &notes_lines {
            println!("{l}");
        }
    }
    Ok(())
}
