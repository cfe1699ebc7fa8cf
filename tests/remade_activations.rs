//! What the forward pass keeps. It does not export ReLU outputs; the relevance pass makes them
//! again from the ReLU's input where a rule reads them. A rule on the ReLU nodes and the rules
//! after them see the values ONNX Runtime would have exported, and the relevance is unchanged.
//! A layer whose rule does not read its output, followed only by ReLUs whose rules do not read
//! their inputs, is not exported at all (the ReLU's output is, instead): the relevance is the
//! same, and a rule that reads what it said it would not gets NaN and fails loudly. A layer
//! whose rule reads its output but accepts `max(z, 0)` in its place, followed only by ReLUs,
//! is not exported either where the layers above send no relevance to zero activations: the
//! rule reads the ReLU's output, and the relevance is the same.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use lrp_rules::{BasicRule, BiasMode, NodeContext, Rule, Stabilizer};
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

/// A rule of `BasicRule`, saying whether it reads its output and whether it accepts a
/// rectified one as told, and counting its calls, the calls that saw an all-NaN output (one
/// the forward pass left out), and those that saw an output with negative values (the layer's
/// own `z`, not `max(z, 0)`).
#[derive(Debug)]
struct OutputProbe {
    inner: BasicRule,
    reads: bool,
    accepts: bool,
    calls: AtomicUsize,
    nan_outputs: AtomicUsize,
    signed_outputs: AtomicUsize,
}

impl OutputProbe {
    fn new(inner: BasicRule, reads: bool, accepts: bool) -> Self {
        OutputProbe {
            inner,
            reads,
            accepts,
            calls: AtomicUsize::new(0),
            nan_outputs: AtomicUsize::new(0),
            signed_outputs: AtomicUsize::new(0),
        }
    }

    /// α1β0 (bias Full, as the `sglrp` preset).
    fn alpha1_beta0(reads: bool) -> Self {
        let stab = Stabilizer::ZeroGuard(1e-7);
        Self::new(
            BasicRule::alpha_beta(1.0, 0.0, BiasMode::Full, stab),
            reads,
            false,
        )
    }

    /// ε, which reads its output.
    fn epsilon(accepts: bool) -> Self {
        Self::new(BasicRule::epsilon(1e-6), true, accepts)
    }
}

impl Rule for OutputProbe {
    fn relevance(
        &self,
        ctx: &NodeContext<'_>,
        r_out: ArrayViewD<'_, f32>,
    ) -> Result<Vec<ArrayD<f32>>, String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if ctx.output.iter().all(|v| v.is_nan()) {
            self.nan_outputs.fetch_add(1, Ordering::SeqCst);
        }
        if ctx.output.iter().any(|&v| v < 0.0) {
            self.signed_outputs.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.relevance(ctx, r_out)
    }

    fn describe(&self) -> String {
        format!(
            "OutputProbe(reads: {}, accepts: {})",
            self.reads, self.accepts
        )
    }

    fn reads_output(&self) -> bool {
        self.reads
    }

    fn zero_input_relevance(&self, op: &lrp_ir::Op) -> lrp_rules::ZeroInput {
        self.inner.zero_input_relevance(op)
    }

    fn accepts_rectified_output(&self) -> bool {
        self.accepts
    }
}

#[test]
fn outputs_no_rule_reads_are_left_out_with_the_same_relevance() {
    let config = |name: &str| {
        format!("(select: Ops([Conv, Dense]), rule: {name}), (select: Op(Relu), rule: Pass)")
    };
    let kept = Arc::new(OutputProbe::alpha1_beta0(true));
    let want = explain_vgg_small(&config("Probe"), &registry_with("Probe", kept.clone())).unwrap();
    let left_out = Arc::new(OutputProbe::alpha1_beta0(false));
    let got =
        explain_vgg_small(&config("Probe"), &registry_with("Probe", left_out.clone())).unwrap();
    // vgg_small: every Conv and Dense layer but the last goes to a ReLU.
    let calls = left_out.calls.load(Ordering::SeqCst);
    assert_eq!(kept.nan_outputs.load(Ordering::SeqCst), 0);
    assert!(calls >= 3, "{calls} calls");
    assert_eq!(
        left_out.nan_outputs.load(Ordering::SeqCst),
        calls - 1,
        "every layer but the last is left out"
    );
    assert_eq!(got.relevance, want.relevance);
    assert_eq!(got.node_sums, want.node_sums);
    assert_eq!(got.kept, want.kept);
}

#[test]
fn a_relu_rule_that_reads_its_input_keeps_the_layer_output() {
    let relu = Arc::new(ReluProbe::default());
    let layer = Arc::new(OutputProbe::alpha1_beta0(false));
    let mut reg = registry_with("ReluProbe", relu.clone());
    let l = layer.clone();
    reg.register("Probe", "a test rule", vec![], move |_, _| Ok(l.clone()))
        .unwrap();
    explain_vgg_small(
        "(select: Ops([Conv, Dense]), rule: Probe), (select: Op(Relu), rule: ReluProbe)",
        &reg,
    )
    .unwrap();
    assert!(relu.0.load(Ordering::SeqCst) > 0);
    assert_eq!(layer.nan_outputs.load(Ordering::SeqCst), 0);
}

#[test]
fn a_rule_that_reads_an_output_it_said_it_would_not_fails() {
    // Epsilon divides by the layer's output.
    let liar = Arc::new(OutputProbe::new(BasicRule::epsilon(1e-6), false, false));
    let err = explain_vgg_small(
        "(select: Ops([Conv, Dense]), rule: Liar), (select: Op(Relu), rule: Pass)",
        &registry_with("Liar", liar),
    )
    .unwrap_err();
    assert!(err.contains("NaN"), "{err}");
}

/// Explains `vgg_small` with `probe` on the layers `select` picks and ε elsewhere.
fn explain_with_probe(
    select: &str,
    others: &str,
    probe: Arc<OutputProbe>,
) -> lrp_engine::Explanation {
    explain_vgg_small(
        &format!(
            "(select: {select}, rule: Probe), (select: Ops([Conv, Dense]), rule: {others}), \
             (select: Op(Relu), rule: Pass)"
        ),
        &registry_with("Probe", probe),
    )
    .unwrap()
}

#[test]
fn rectified_outputs_give_the_same_relevance() {
    let kept = Arc::new(OutputProbe::epsilon(false));
    let want = explain_with_probe("Ops([Conv, Dense])", "Epsilon", kept.clone());
    let rectified = Arc::new(OutputProbe::epsilon(true));
    let got = explain_with_probe("Ops([Conv, Dense])", "Epsilon", rectified.clone());
    // vgg_small: every Conv and Dense layer but the last goes to a ReLU, and its random
    // weights make some of every layer's outputs negative.
    let calls = rectified.calls.load(Ordering::SeqCst);
    assert!(calls >= 3, "{calls} calls");
    assert_eq!(kept.signed_outputs.load(Ordering::SeqCst), calls);
    assert_eq!(
        rectified.signed_outputs.load(Ordering::SeqCst),
        1,
        "every layer but the last reads its ReLU's output"
    );
    assert_eq!(got.relevance, want.relevance);
    assert_eq!(got.node_sums, want.node_sums);
}

#[test]
fn outputs_stay_signed_where_relevance_may_reach_zero_activations() {
    // Flat sends relevance to every input of the Dense layers, zero or not: the last
    // convolution, whose ReLU's output they read (pooled, flattened), keeps its own output.
    let rectified = Arc::new(OutputProbe::epsilon(true));
    let got = explain_with_probe("Op(Conv)", "Flat", rectified.clone());
    let want = explain_with_probe("Op(Conv)", "Flat", Arc::new(OutputProbe::epsilon(false)));
    assert_eq!(rectified.signed_outputs.load(Ordering::SeqCst), 1);
    assert!(rectified.calls.load(Ordering::SeqCst) >= 2);
    assert_eq!(got.relevance, want.relevance);
}

#[test]
fn a_stabiliser_zero_at_zero_keeps_the_output() {
    // The z-rule's stab(0) = 0: 0 / stab(max(z, 0)) would be NaN where z < 0.
    let z = BasicRule::z(Stabilizer::SignEpsilon(0.0));
    assert!(!z.accepts_rectified_output());
    assert!(BasicRule::epsilon(1e-6).accepts_rectified_output());
}

#[test]
fn a_relu_after_a_relu_keeps_the_layer_output() {
    // Dense, ReLU, ReLU, Dense: the first ReLU's output is left out (only a ReLU that does not
    // read its input takes it), so the first Dense layer cannot read it in place of its own.
    use lrp_testkit::{OnnxBuilder, random_normal, temp_model};
    let mut b = OnnxBuilder::new("two_relus", 17).with_seed(3);
    b.input("x", &[None, Some(6)]);
    let h = b.gemm("x", 6, 8);
    let r1 = b.relu(&h);
    let r2 = b.relu(&r1);
    let out = b.gemm(&r2, 8, 4);
    b.output(&out);
    let (_dir, path) = temp_model(&b.build());
    let x = ArrayD::from_shape_vec(ndarray::IxDyn(&[3, 6]), random_normal(4, 18, 1.0)).unwrap();
    let explain = |accepts: bool| {
        let probe = Arc::new(OutputProbe::epsilon(accepts));
        let reg = registry_with("Probe", probe);
        let config = lrp_rules::RuleConfig::parse(
            "(rules: [(select: Op(Dense), rule: Probe), (select: Op(Relu), rule: Pass)])",
            "t.ron",
            &reg,
        )
        .unwrap();
        let graph = lrp_import::import_onnx(&path).unwrap().graph;
        let mut ex =
            lrp_engine::Explainer::new(graph, config, &reg, lrp_runtime::Device::Cpu, Some(1))
                .unwrap();
        ex.explain(&x, &lrp_engine::ExplainOptions::default())
            .unwrap()
    };
    assert_eq!(explain(true).relevance, explain(false).relevance);
}
