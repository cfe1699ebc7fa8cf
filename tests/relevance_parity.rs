//! Every method on three fixture networks against independent reference relevances
//! (`tests/fixtures/gen_relevance.py`: a numpy reimplementation of SPEC.md for the seed's
//! methods, Zennit 0.5.1 for its composites), and the invariants of SPEC.md.

mod common;

use common::*;
use lrp_engine::{ExplainOptions, Explainer, Targets};
use lrp_import::import_onnx;
use lrp_rules::{Registry, presets};
use lrp_runtime::Device;
use ndarray::{ArrayD, Axis};

const MODELS: &[&str] = &["vgg_small", "resnet_block", "mlp"];

fn manifest() -> serde_json::Value {
    let text =
        std::fs::read_to_string(root().join("tests/fixtures/relevance/manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn explain(model: &str, method: &str, targets: Targets) -> lrp_engine::Explanation {
    let reg = Registry::with_builtins();
    let graph = import_onnx(&fixture(&format!("{model}.onnx")))
        .unwrap()
        .graph;
    let config = presets::preset(method, &reg).unwrap();
    let mut ex = Explainer::new(graph, config, &reg, Device::Cpu, Some(1)).unwrap();
    let x = read_npy(&fixture(&format!("{model}.input.npy")));
    ex.explain(
        &x,
        &ExplainOptions {
            targets,
            ..Default::default()
        },
    )
    .unwrap()
}

/// Largest |Δ| relative to the reference's max |R|, per input.
fn rel_errors(got: &ArrayD<f32>, want: &ArrayD<f32>) -> Vec<f64> {
    assert_eq!(got.shape(), want.shape());
    got.outer_iter()
        .zip(want.outer_iter())
        .map(|(g, w)| {
            let d = g
                .iter()
                .zip(w.iter())
                .fold(0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
            let s = w.iter().fold(0f64, |m, b| m.max((*b as f64).abs()));
            d / s.max(f64::MIN_POSITIVE)
        })
        .collect()
}

#[test]
fn every_method_matches_the_references() {
    let m = manifest();
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for model in MODELS {
        let methods = m[model]["methods"].as_object().unwrap();
        for method in presets::names() {
            let entry = &methods[method];
            let targets: Vec<usize> = entry["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap() as usize)
                .collect();
            let ex = explain(model, method, Targets::Each(targets.clone()));
            assert_eq!(ex.targets, targets);
            let want = read_npy(
                &root()
                    .join("tests/fixtures/relevance")
                    .join(entry["file"].as_str().unwrap()),
            );
            let errs = rel_errors(&ex.relevance, &want);
            let worst = errs.iter().cloned().fold(0f64, f64::max);
            report.push(format!("{model:13} {method:25} {worst:.2e}"));
            // α2β1 with the full bias (iNNvestigate's convention) divides by inhibitors that
            // cancel to near 0 on the BN-folded residual net: with f32 activations the maps are
            // ill-conditioned (the generator measured 2.2e-4 for its own numpy code run in f32).
            // Everything else is held to the 1e-4.
            let tol = if *model == "resnet_block" && matches!(method, "lrp-b" | "sglrp-seq-b") {
                5e-4
            } else {
                1e-4
            };
            if worst > tol {
                failures.push(format!("{model} {method}: max |Δ|/max|R| = {worst:.3e}"));
            }
        }
    }
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn two_pass_maps_sum_to_zero_and_signed_signals_start_at_zero() {
    for model in MODELS {
        for method in ["sglrp", "sglrp-seq-a", "sglrp-seq-b", "clrp"] {
            let ex = explain(model, method, Targets::Top);
            for (i, map) in ex.relevance.outer_iter().enumerate() {
                let sum: f64 = map.iter().map(|&v| v as f64).sum();
                let scale: f64 = map.iter().map(|&v| (v as f64).abs()).sum();
                if method == "sglrp" || method == "clrp" {
                    assert!(
                        sum.abs() <= 1e-5 * scale,
                        "{model} {method} input {i}: sum {sum}, Σ|R| {scale}"
                    );
                } else {
                    // One pass of the softmax gradient: Σ over the signal is target_offset ≈ 0,
                    // and the rules pass most of it on.
                    assert!(
                        ex.initial_sums[i][0].abs() < 1e-6,
                        "{model} {method}: {:?}",
                        ex.initial_sums[i]
                    );
                }
            }
        }
    }
}

#[test]
fn flat_first_layer_gives_equal_channels() {
    // lrp-a's first layer is Flat: every input channel gets the same map.
    let ex = explain("vgg_small", "lrp-a", Targets::Top);
    for map in ex.relevance.outer_iter() {
        let c0 = map.index_axis(Axis(0), 0);
        for c in 1..map.shape()[0] {
            let d = (&map.index_axis(Axis(0), c) - &c0)
                .iter()
                .fold(0f32, |m, v| m.max(v.abs()));
            assert!(
                d <= 1e-6 * c0.iter().fold(0f32, |m, v| m.max(v.abs())),
                "channel {c}"
            );
        }
    }
}

#[test]
fn sglrp_seq_a_is_the_difference_of_target_and_dual_parts() {
    // sglrp-seq-a (one signed pass) = LRP-A on the target part − LRP-A on the dual part,
    // because every rule is linear in the output relevance: the two-pass signal with the same
    // rules yields exactly those parts as its passes T and O.
    use lrp_rules::Signal;
    let reg = Registry::with_builtins();
    for model in MODELS {
        let graph = import_onnx(&fixture(&format!("{model}.onnx")))
            .unwrap()
            .graph;
        let x = read_npy(&fixture(&format!("{model}.input.npy")));
        let run = |signal: Signal| {
            let mut config = presets::preset("sglrp-seq-a", &reg).unwrap();
            config.signal = signal;
            let mut ex = Explainer::new(graph.clone(), config, &reg, Device::Cpu, Some(1)).unwrap();
            ex.explain(&x, &ExplainOptions::default()).unwrap()
        };
        let signed = run(Signal::SglrpSigned {
            target_offset: 1e-8,
            head_relu: false,
        });
        let parts = run(Signal::Sglrp {
            target_offset: 1e-8,
            head_relu: false,
        });
        for (i, map) in signed.relevance.outer_iter().enumerate() {
            let t = parts.passes.index_axis(Axis(0), 2 * i);
            let o = parts.passes.index_axis(Axis(0), 2 * i + 1);
            let diff = &t - &o;
            // f32 rounding of T and O bounds how exactly T − O can be formed.
            let scale = map
                .iter()
                .chain(t.iter())
                .chain(o.iter())
                .fold(0f32, |m, v| m.max(v.abs()));
            let err = (&map - &diff).iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(
                err <= 1e-5 * scale,
                "{model} input {i}: max |Δ| {err}, max |R| {scale}"
            );
        }
    }
}

#[test]
fn conservation_gap_is_the_difference_of_input_and_initial_sums() {
    let a = explain("vgg_small", "lrp-epsilon", Targets::Top);
    for (i, map) in a.relevance.outer_iter().enumerate() {
        let total: f64 = map.iter().map(|&v| v as f64).sum();
        let expected = a.initial_sums[i][0] + a.conservation_gap[i][0];
        assert!(
            (total - expected).abs() <= 1e-6 * a.initial_sums[i][0].abs(),
            "{total} vs {expected}"
        );
    }
}

#[test]
fn conservation_without_bias_and_with_epsilon_to_zero() {
    // A bias-free ReLU CNN (conv, max pool, flatten, dense): the Z rule with a tiny ε conserves
    // the target logit exactly (up to f32 rounding).
    use lrp_testkit::{Attr, OnnxBuilder, random_normal, temp_model};
    let mut b = OnnxBuilder::new("nobias", 17).with_seed(5);
    b.input("x", &[None, Some(3), Some(12), Some(12)]);
    let c1 = b.conv("x", 3, 8, 3, 1, 1, 1, false);
    let r1 = b.relu(&c1);
    let p1 = b.maxpool(&r1, 2, 2, 0);
    let c2 = b.conv(&p1, 8, 8, 3, 1, 1, 1, false);
    let r2 = b.relu(&c2);
    let f = b.flatten(&r2);
    b.initializer("fc.w", &[5, 8 * 6 * 6], random_normal(9, 5 * 288, 0.1));
    b.node(
        "Gemm",
        &[f.as_str(), "fc.w"],
        &["logits"],
        vec![Attr::int("transB", 1)],
    );
    b.output("logits");
    let (_dir, path) = temp_model(&b.build());
    let reg = Registry::with_builtins();
    let graph = import_onnx(&path).unwrap().graph;
    let config = lrp_rules::RuleConfig::parse(
        "(rules: [(select: Ops([Conv, Dense]), rule: Z(stabilizer: SignEpsilon(1e-12)))])",
        "z.ron",
        &reg,
    )
    .unwrap();
    let mut ex = Explainer::new(graph, config, &reg, Device::Cpu, Some(1)).unwrap();
    let x = ArrayD::from_shape_vec(
        ndarray::IxDyn(&[3, 3, 12, 12]),
        random_normal(3, 3 * 3 * 144, 1.0),
    )
    .unwrap();
    let e = ex.explain(&x, &ExplainOptions::default()).unwrap();
    for i in 0..3 {
        let logit = e.logits[[i, e.targets[i]]] as f64;
        let total: f64 = e
            .relevance
            .index_axis(Axis(0), i)
            .iter()
            .map(|&v| v as f64)
            .sum();
        assert!(
            (total - logit).abs() <= 1e-4 * logit.abs(),
            "input {i}: Σ R = {total}, z_t = {logit}"
        );
        assert!(e.conservation_gap[i][0].abs() <= 1e-4 * logit.abs());
    }
}
