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
fn sglrp_maps_sum_to_zero_and_lrp_conserves_without_bias_effects() {
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
    // sglrp-seq-a (one signed pass) = LRP-A on the target part − LRP-A on the negated dual part,
    // because every rule is linear in the output relevance.
    use lrp_rules::Signal;
    let reg = Registry::with_builtins();
    let graph = import_onnx(&fixture("vgg_small.onnx")).unwrap().graph;
    let x = read_npy(&fixture("vgg_small.input.npy"));
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
    // The two-pass signal without combination: T and O as separate maps via node sums is not
    // exposed, so rebuild both parts with the two-pass signal and compare T − O.
    let two = {
        let mut config = presets::preset("sglrp-seq-a", &reg).unwrap();
        config.signal = Signal::Sglrp {
            target_offset: 1e-8,
            head_relu: false,
        };
        let mut ex = Explainer::new(graph.clone(), config, &reg, Device::Cpu, Some(1)).unwrap();
        ex.explain(
            &x,
            &ExplainOptions {
                keep: vec![graph.nodes()[graph.topo_order()[0]].name.clone()],
                ..Default::default()
            },
        )
        .unwrap()
    };
    // Σ_R of the signed pass = ΣT − ΣO at the input, per image.
    let input_sums = |e: &lrp_engine::Explanation| -> Vec<f64> {
        e.relevance
            .outer_iter()
            .map(|m| m.iter().map(|&v| v as f64).sum())
            .collect()
    };
    let first = &two.node_sums[0].1;
    let s = input_sums(&signed);
    for i in 0..s.len() {
        let t_minus_o = two.conservation_gap[i][0] + two.initial_sums[i][0]
            - (two.conservation_gap[i][1] + two.initial_sums[i][1]);
        assert!(
            (s[i] - t_minus_o).abs() <= 1e-4 * s[i].abs().max(1e-6),
            "input {i}: {} vs {t_minus_o}",
            s[i]
        );
        assert!(first[i].len() == 2);
    }
}

#[test]
fn linearity_in_the_output_relevance() {
    // Doubling the logits' relevance (the Logit signal of 2z via a scaled last layer is not
    // available, so compare target t with the same map from Targets::Each) — LRP-ε maps scale
    // with the initial relevance: R(2s) = 2 R(s).
    let a = explain("vgg_small", "lrp-epsilon", Targets::Top);
    let sums: Vec<f64> = a.initial_sums.iter().map(|v| v[0]).collect();
    for (i, map) in a.relevance.outer_iter().enumerate() {
        let total: f64 = map.iter().map(|&v| v as f64).sum();
        // ε → 0 with biases: conservation holds up to what the biases absorb, reported.
        assert!((total - sums[i] - a.conservation_gap[i][0]).abs() < 1e-4 * sums[i].abs());
    }
}
