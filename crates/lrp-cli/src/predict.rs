//! `lrp-graph predict`.

use anyhow::{Context, Result, anyhow};
use lrp_ir::{Graph, NodeId, Op, Preprocess};
use lrp_runtime::{ExportOutputs, Forward};
use ndarray::{Array2, Ix2};

use crate::args::PredictArgs;

pub fn run(a: PredictArgs) -> Result<()> {
    // One batch: a short run (see crate::small_pages), from the input's first byte on.
    crate::small_pages(true);
    let graph = Graph::load(&a.graph)?;
    let pre: Option<Preprocess> = a
        .preprocess
        .as_deref()
        .map(|p| p.parse().map_err(|e| anyhow!("--preprocess: {e}")))
        .transpose()?;
    if let Some(p) = &pre {
        p.check_for(graph.input())
            .map_err(|e| anyhow!("--preprocess: {e}"))?;
    }
    if a.top == 0 {
        return Err(anyhow!("--top must be at least 1"));
    }
    let (batch, sources) = lrp_io::load_input(&a.input, graph.input(), pre.as_ref())?;
    let logits_id = logits_node(&graph)?;
    let mut fwd = Forward::new(
        &graph,
        a.device.into(),
        ExportOutputs::Selected(vec![logits_id]),
        a.threads,
    )?;
    let acts = fwd.run(batch.view())?;
    let logits = as_matrix(acts.get(logits_id).expect("exported"));
    let labels = graph.labels();
    let mut text = String::new();
    for (i, row) in logits.outer_iter().enumerate() {
        let probs = softmax_f64(row.as_slice().expect("standard layout"));
        let source = if sources.len() == logits.nrows() {
            sources[i].display().to_string()
        } else {
            format!("{}[{i}]", sources[0].display())
        };
        text.push_str(&format!("{source}\n"));
        for (rank, c) in top_k(&probs, a.top).into_iter().enumerate() {
            let label = labels.map(|l| format!("  {}", l[c])).unwrap_or_default();
            text.push_str(&format!(
                "  {:>2}. class {c:<5} p = {:.6}  logit = {:.4}{label}\n",
                rank + 1,
                probs[c],
                row[c]
            ));
        }
    }
    print!("{text}");
    if let Some(path) = &a.logits {
        lrp_io::write_npy(path, &logits.into_dyn()).context("--logits")?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// The node whose output holds the pre-softmax logits: the output node, or its input when the
/// graph ends in a Softmax.
pub fn logits_node(graph: &Graph) -> Result<NodeId> {
    let out = graph.output_id();
    let node = &graph.nodes()[out];
    if matches!(node.op, Op::Softmax { .. }) {
        return graph.node_id(&node.inputs[0]).ok_or_else(|| {
            anyhow!(
                "the graph's Softmax '{}' reads the graph input directly",
                node.name
            )
        });
    }
    Ok(out)
}

/// `[N, ...]` as `[N, rest]`.
fn as_matrix(a: &ndarray::ArrayD<f32>) -> Array2<f32> {
    let n = a.shape()[0];
    let rest = a.len() / n.max(1);
    a.as_standard_layout()
        .into_owned()
        .into_shape_with_order((n, rest))
        .expect("same number of values")
        .into_dimensionality::<Ix2>()
        .expect("2-D")
}

/// Softmax computed in f64 with the maximum subtracted.
pub fn softmax_f64(z: &[f32]) -> Vec<f64> {
    let m = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let e: Vec<f64> = z.iter().map(|&v| (v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
pub fn top_k(p: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}
