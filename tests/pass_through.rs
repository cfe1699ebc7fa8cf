//! A rule that says relevance moves through a node unchanged (`Rule::moves_unchanged`) has it
//! handed on without being called, with the same result as calling it; where the shapes do not
//! allow that, the rule is called as usual.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use lrp_rules::{NodeContext, Rule};
use ndarray::{ArrayD, ArrayViewD, IxDyn};

/// Copies the relevance into the input's shape, counting its calls.
#[derive(Debug, Default)]
struct Mover(AtomicUsize);

impl Rule for Mover {
    fn relevance(
        &self,
        ctx: &NodeContext<'_>,
        r_out: ArrayViewD<'_, f32>,
    ) -> Result<Vec<ArrayD<f32>>, String> {
        self.0.fetch_add(1, Ordering::SeqCst);
        let mut shape = vec![r_out.shape()[0]];
        shape.extend_from_slice(&ctx.inputs[0].shape()[1..]);
        let r = r_out.as_standard_layout().into_owned();
        Ok(vec![
            r.into_shape_with_order(IxDyn(&shape))
                .map_err(|e| e.to_string())?,
        ])
    }

    fn describe(&self) -> String {
        "Mover".into()
    }

    fn moves_unchanged(&self, _ctx: &NodeContext<'_>) -> bool {
        true
    }
}

#[test]
fn relevance_moves_on_without_calling_the_rule() {
    let mover = Arc::new(Mover::default());
    let reg = registry_with("Mover", mover.clone());
    let base = "(select: Ops([Conv, Dense]), rule: Epsilon)";
    let want = explain_vgg_small(base, &reg).unwrap();
    let got = explain_vgg_small(
        &format!("(select: Ops([Relu, Flatten]), rule: Mover), {base}"),
        &reg,
    )
    .unwrap();
    assert_eq!(mover.0.load(Ordering::SeqCst), 0, "the rule was called");
    assert_eq!(got.relevance, want.relevance);
    assert_eq!(got.kept, want.kept);

    // On a Dense layer the input's shape holds another number of values: the rule is called
    // (and its reshape fails, which is reported as its error).
    let err = explain_vgg_small(&format!("(select: Op(Dense), rule: Mover), {base}"), &reg);
    assert!(mover.0.load(Ordering::SeqCst) > 0);
    let msg = err.unwrap_err();
    assert!(msg.contains("Mover") && msg.contains("Dense"), "{msg}");
}
