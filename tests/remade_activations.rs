//! The forward pass does not export ReLU outputs; the relevance pass makes them again from
//! the ReLU's input where a rule reads them. A rule on the ReLU nodes and the rules after them
//! see the values ONNX Runtime would have exported, and the relevance is unchanged.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use lrp_rules::{NodeContext, Rule};
use ndarray::{ArrayD, ArrayViewD};

/// Passes the relevance on, after checking that the node's output is `max(input, 0)`;
/// counts its calls.
#[derive(Debug, Default)]
struct ReluProbe(AtomicUsize);

impl Rule for ReluProbe {
    fn relevance(
        &self,
        ctx: &NodeContext<'_>,
        r_out: ArrayViewD<'_, f32>,
    ) -> Result<Vec<ArrayD<f32>>, String> {
        self.0.fetch_add(1, Ordering::SeqCst);
        let x = &ctx.inputs[0];
        if ctx.output.shape() != x.shape() {
            return Err(format!(
                "output {:?}, input {:?}",
                ctx.output.shape(),
                x.shape()
            ));
        }
        if ctx.output.iter().all(|&v| v == 0.0) {
            return Err("an all-zero output".into());
        }
        for (&y, &v) in ctx.output.iter().zip(x.iter()) {
            if y != v.max(0.0) {
                return Err(format!("output {y} for input {v}"));
            }
        }
        Ok(vec![r_out.to_owned()])
    }

    fn describe(&self) -> String {
        "ReluProbe".into()
    }
}

#[test]
fn rules_read_remade_relu_outputs() {
    let probe = Arc::new(ReluProbe::default());
    let reg = registry_with("ReluProbe", probe.clone());
    // Epsilon reads every layer's input (the ReLU outputs) and output; Pass moves the
    // relevance through the ReLUs without reading them.
    let base = "(select: Ops([Conv, Dense]), rule: Epsilon)";
    let want = explain_vgg_small(&format!("(select: Op(Relu), rule: Pass), {base}"), &reg).unwrap();
    let got = explain_vgg_small(
        &format!("(select: Op(Relu), rule: ReluProbe), {base}"),
        &reg,
    )
    .unwrap();
    assert!(
        probe.0.load(Ordering::SeqCst) > 0,
        "no ReLU node was visited"
    );
    assert_eq!(got.relevance, want.relevance);
    assert_eq!(got.node_sums, want.node_sums);
}
