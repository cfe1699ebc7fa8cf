//! The project's presets under snapshot tests, with the helpers research code uses
//! (`lrp_engine::snapshot`): the rule every node gets on the fixture networks, as
//! `inspect --method` prints it, and a digest of each preset's explanation of the fixture
//! inputs. A change of a preset, a rule's parameters, the selectors or a rule's arithmetic
//! shows up here; f32 rounding differences between machines do not.

mod common;

use common::*;
use lrp_engine::snapshot::{DigestOptions, assignment_text, digest};
use lrp_engine::{ExplainOptions, Explainer};
use lrp_import::import_onnx;
use lrp_rules::{Registry, presets};
use lrp_runtime::Device;

#[test]
fn preset_assignments() {
    let reg = Registry::with_builtins();
    for model in ["vgg_small", "resnet_block", "mlp"] {
        let graph = import_onnx(&fixture(&format!("{model}.onnx")))
            .unwrap()
            .graph;
        for method in presets::names() {
            let config = presets::preset(method, &reg).unwrap();
            let text = assignment_text(&graph, &config, &reg).unwrap();
            insta::assert_snapshot!(format!("{model}__{method}"), text);
        }
    }
}

#[test]
fn preset_digests() {
    let reg = Registry::with_builtins();
    for model in ["vgg_small", "resnet_block"] {
        let graph = import_onnx(&fixture(&format!("{model}.onnx")))
            .unwrap()
            .graph;
        let x = read_npy(&fixture(&format!("{model}.input.npy")));
        for method in presets::names() {
            let config = presets::preset(method, &reg).unwrap();
            let mut ex = Explainer::new(graph.clone(), config, &reg, Device::Cpu, None).unwrap();
            let e = ex.explain(&x, &ExplainOptions::default()).unwrap();
            let text = digest(&ex, &e, &DigestOptions::default());
            insta::assert_snapshot!(format!("digest__{model}__{method}"), text);
        }
    }
}

/// The digest sees a rule parameter change that the assignment text also shows, and does not
/// see f32 noise: the same explanation with every value perturbed by one part in 10⁶ gives the
/// same digest.
#[test]
fn digests_see_rule_changes_not_noise() {
    let reg = Registry::with_builtins();
    let graph = import_onnx(&fixture("vgg_small.onnx")).unwrap().graph;
    let x = read_npy(&fixture("vgg_small.input.npy"));
    let run = |rules: &str| {
        let text = format!(
            "(name: \"t\", signal: Logit(head_relu: false), rules: [(select: Ops([Conv, Dense]), rule: {rules})])"
        );
        let config = lrp_rules::RuleConfig::parse(&text, "t.ron", &reg).unwrap();
        let mut ex = Explainer::new(graph.clone(), config, &reg, Device::Cpu, None).unwrap();
        let e = ex.explain(&x, &ExplainOptions::default()).unwrap();
        let d = digest(&ex, &e, &DigestOptions::default());
        (ex, e, d)
    };
    let (ex, mut e, a) = run("AlphaBeta(alpha: 2.0, beta: 1.0)");
    let (_, _, b) = run("AlphaBeta(alpha: 3.0, beta: 2.0)");
    assert_ne!(a, b);
    let (_, _, c) = run("Epsilon(epsilon: 0.25)");
    let (_, _, d) = run("Epsilon(epsilon: 0.01)");
    assert_ne!(c, d);
    // Noise of 1e-6 relative on every number the digest reads.
    let mut k = 0u32;
    let mut jitter = |v: &mut f32| {
        k = k.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        *v *= 1.0 + ((k >> 16) as f32 / 65_536.0 - 0.5) * 2e-6;
    };
    e.relevance.iter_mut().for_each(&mut jitter);
    for (_, sums) in e.node_sums.iter_mut() {
        for v in sums.iter_mut().flatten() {
            *v *= 1.0 + 1e-6;
        }
    }
    assert_eq!(digest(&ex, &e, &DigestOptions::default()), a);
}
