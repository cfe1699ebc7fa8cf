//! Text for snapshot tests (insta) of rule configurations: the rule every node gets
//! ([`assignment_text`]) and a digest of an explanation ([`digest`]) that stays the same across
//! machines, thread counts and f32 rounding, and changes when a rule does.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use lrp_engine::snapshot::{DigestOptions, assignment_text, digest};
//! use lrp_engine::{ExplainOptions, Explainer};
//! use lrp_rules::{Registry, RuleConfig};
//!
//! let registry = Registry::with_builtins();
//! let graph = lrp_ir::Graph::load("model.ron".as_ref())?;
//! let config = RuleConfig::load("my-rules.ron".as_ref(), &registry)?;
//! let rules = assignment_text(&graph, &config, &registry)?; // insta::assert_snapshot!(rules)
//! let mut explainer =
//!     Explainer::new(graph, config, &registry, lrp_runtime::Device::Cpu, Some(1))?;
//! # let batch = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[1, 3, 8, 8]));
//! let e = explainer.explain(&batch, &ExplainOptions::default())?;
//! let text = digest(&explainer, &e, &DigestOptions::default()); // insta::assert_snapshot!(text)
//! # Ok(())
//! # }
//! ```

use lrp_ir::{Graph, Layout};
use lrp_rules::{Registry, RuleConfig};
use ndarray::{Array2, ArrayViewD, Axis};

use crate::{ExplainError, Explainer, Explanation, canonicalize};

/// The rule configuration as it applies to `graph`: a header with the method and its signal,
/// then one line per node of the canonical graph (BatchNorm folded, final Softmax removed) with
/// its op and its rule's full description. The same text as `lrp-graph inspect --method`.
pub fn assignment_text(
    graph: &Graph,
    config: &RuleConfig,
    registry: &Registry,
) -> Result<String, ExplainError> {
    let (canonical, softmax_removed) = canonicalize(graph.clone(), config)?;
    let assignment = config.assign(&canonical, registry)?;
    Ok(format!(
        "method {} signal {:?} relu {}{}\n{}",
        config.name,
        config.signal,
        config.relu,
        if softmax_removed {
            " (final Softmax removed)"
        } else {
            ""
        },
        assignment.describe(&canonical)
    ))
}

/// How coarse a [`digest`] is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DigestOptions {
    /// Significant digits of every number (default 3). More digits see smaller rule changes and
    /// risk more often that f32 noise flips a last digit.
    pub digits: usize,
    /// Numbers smaller than this fraction of their scale are written as 0 (default 1e-4): sums
    /// that are 0 in exact arithmetic (SGLRP, CLRP) are ±noise in f32. The scale of the sums
    /// and statistics is the larger of the largest initial sum and the input relevance's
    /// `Σ|R|` (a one-pass softmax-gradient signal sums to ≈ 0 at the logits already); that of
    /// the map its largest cell.
    pub zero_below: f64,
    /// The coarse map has `grid × grid` cells (default 8; fewer where the map is smaller).
    pub grid: usize,
    /// The coarse map's cells are written as integers in `-levels..=levels` (default 9).
    pub levels: usize,
}

impl Default for DigestOptions {
    fn default() -> Self {
        DigestOptions {
            digits: 3,
            zero_below: 1e-4,
            grid: 8,
            levels: 9,
        }
    }
}

/// A stable text digest of an explanation, per input: the target, the initial relevance's
/// sums, statistics of the input relevance (sum, sum of |R|, min, max, share of positive
/// relevance), a coarse `grid × grid` map of the channel-summed relevance (cell means scaled to
/// ±`levels` by the largest |cell|) and the relevance sum of every node per relevance map.
/// Numbers are rounded to `digits` significant digits.
pub fn digest(explainer: &Explainer, e: &Explanation, opts: &DigestOptions) -> String {
    let layout = explainer.graph().input().layout;
    let maps = explainer.config().signal.maps();
    let mut out = format!(
        "method {} signal {:?}, {} input(s), {} relevance map(s) each\n",
        explainer.config().name,
        explainer.config().signal,
        e.targets.len(),
        maps
    );
    for (i, &t) in e.targets.iter().enumerate() {
        let r = e.relevance.index_axis(Axis(0), i);
        let (sum, abs, min, max, pos) = stats(&r);
        let scale = e.initial_sums[i]
            .iter()
            .fold(abs, |m, v| m.max(v.abs()))
            .max(f64::MIN_POSITIVE);
        let num = |v: f64| round(v, scale, opts);
        out.push_str(&format!("input {i}: target {t}\n"));
        out.push_str(&format!(
            "  initial sums: {}\n",
            list(&e.initial_sums[i], &num)
        ));
        let pos_share = if abs > 0.0 { pos / abs } else { 0.0 };
        out.push_str(&format!(
            "  input relevance: sum {}, sum|R| {}, min {}, max {}, positive share {}\n",
            num(sum),
            num(abs),
            num(min),
            num(max),
            round(pos_share, 1.0, opts)
        ));
        out.push_str(&coarse_map(&r, layout, opts));
        out.push_str("  node sums:\n");
        let width = e
            .node_sums
            .iter()
            .map(|(n, _)| n.chars().count())
            .max()
            .unwrap_or(0);
        for (name, sums) in &e.node_sums {
            out.push_str(&format!("    {name:<width$}  {}\n", list(&sums[i], &num)));
        }
    }
    out
}

fn list(v: &[f64], num: &impl Fn(f64) -> String) -> String {
    v.iter().map(|&x| num(x)).collect::<Vec<_>>().join(" ")
}

/// `v` to `digits` significant digits in scientific notation; 0 where `|v|` is below
/// `zero_below · scale`.
fn round(v: f64, scale: f64, opts: &DigestOptions) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    if v.abs() < opts.zero_below * scale || v == 0.0 {
        return "0".into();
    }
    format!("{:.*e}", opts.digits.max(1) - 1, v)
}

/// Sum, sum of |R|, min, max and sum of the positive values, in f64.
fn stats(r: &ArrayViewD<'_, f32>) -> (f64, f64, f64, f64, f64) {
    let mut s = (0.0, 0.0, f64::INFINITY, f64::NEG_INFINITY, 0.0);
    for &v in r.iter() {
        let v = v as f64;
        s.0 += v;
        s.1 += v.abs();
        s.2 = s.2.min(v);
        s.3 = s.3.max(v);
        s.4 += v.max(0.0);
    }
    s
}

/// The channel-summed map averaged over a grid of cells, written as rows of integers.
fn coarse_map(r: &ArrayViewD<'_, f32>, layout: Layout, opts: &DigestOptions) -> String {
    let plane: Array2<f64> = match (layout, r.ndim()) {
        (Layout::NCHW, 3) => r.mapv(f64::from).sum_axis(Axis(0)),
        (Layout::NHWC, 3) => r.mapv(f64::from).sum_axis(Axis(2)),
        _ => {
            let flat: Vec<f64> = r.iter().map(|&v| v as f64).collect();
            let n = flat.len();
            ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[1, n]), flat).expect("one row")
        }
    }
    .into_dimensionality()
    .expect("2-D");
    let (h, w) = plane.dim();
    let (gh, gw) = (opts.grid.clamp(1, h.max(1)), opts.grid.clamp(1, w.max(1)));
    // Means: cells hold ⌊·⌋ or ⌈·⌉ pixels.
    let mut cells = Array2::<f64>::zeros((gh, gw));
    let mut counts = Array2::<f64>::zeros((gh, gw));
    for ((y, x), &v) in plane.indexed_iter() {
        let cell = (y * gh / h, x * gw / w);
        cells[cell] += v;
        counts[cell] += 1.0;
    }
    cells.zip_mut_with(&counts, |c, &n| *c /= n.max(1.0));
    let m = cells.iter().fold(0f64, |m, v| m.max(v.abs()));
    let levels = opts.levels.max(1) as f64;
    let mut out = format!(
        "  map ({gh}x{gw} cells, ±{} = max |cell mean|):\n",
        opts.levels
    );
    for row in cells.outer_iter() {
        out.push_str("   ");
        for &v in row {
            let q = if m > 0.0 && v.abs() >= opts.zero_below * m {
                (v / m * levels).round() as i64
            } else {
                0
            };
            out.push_str(&format!(" {q:>3}"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};

    #[test]
    fn rounding() {
        let o = DigestOptions::default();
        assert_eq!(round(1.23456, 1.0, &o), "1.23e0");
        assert_eq!(round(-0.000123456, 1.0, &o), "-1.23e-4");
        assert_eq!(round(3e-6, 1.0, &o), "0");
        assert_eq!(round(3e-6, 1e-3, &o), "3.00e-6");
        assert_eq!(round(f64::NAN, 1.0, &o), "NaN");
        // f32 noise below the last digit does not show.
        assert_eq!(round(1.234_000_1, 1.0, &o), round(1.233_999_9, 1.0, &o));
    }

    #[test]
    fn coarse_map_of_a_ramp() {
        // [C=1, H=4, W=4] with values x − 1.5 in column x: 2×2 cells hold means −1, 1.
        let r = ArrayD::from_shape_fn(IxDyn(&[1, 4, 4]), |i| i[2] as f32 - 1.5);
        let o = DigestOptions {
            grid: 2,
            ..Default::default()
        };
        let text = coarse_map(&r.view(), Layout::NCHW, &o);
        assert_eq!(
            text,
            "  map (2x2 cells, ±9 = max |cell mean|):\n     -9   9\n     -9   9\n"
        );
    }
}
