//! The relevance pass computes 3×3, stride-1 convolutions by Winograd's F(4×4, 3×3) (F(2×2, 3×3)
//! on small outputs) unless told otherwise (`ExplainOptions::conv3x3`). Its maps, passes and node
//! sums, by either tile, are those of the direct convolutions up to rounding, for one- and
//! two-pass signals and for rules that convolve modified weights (z⁺, αβ, z^B); and they are not
//! bit-identical, so the Winograd paths ran.

mod common;

use common::*;
use lrp_engine::{Conv3x3, ExplainOptions, Explanation};
use ndarray::ArrayD;

fn explain(model: &str, method: &str, x: &ArrayD<f32>, conv3x3: Conv3x3) -> Explanation {
    preset_explainer(model, method)
        .explain(
            x,
            &ExplainOptions {
                bounds: Some(wide_bounds()),
                conv3x3: Some(conv3x3),
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{model}, {method}: {e}"))
}

/// Largest difference relative to the largest magnitude of `want`.
fn max_rel(got: &ArrayD<f32>, want: &ArrayD<f32>) -> f32 {
    let (d, scale) = max_diff(got, want);
    d / scale.max(1e-30)
}

#[test]
fn winograd_matches_the_direct_convolutions() {
    // (resnet_block's convolutions are below the size that goes to either fast path)
    for model in ["vgg_small"] {
        // five images, so the convolutions are large enough for the fast paths
        let x = five_images(model);
        for (method, variant) in [
            ("lrp-epsilon", Conv3x3::Winograd),
            ("sglrp", Conv3x3::Winograd),
            ("epsilon-plus", Conv3x3::Winograd),
            ("lrp-a", Conv3x3::Winograd),
            ("lrp-epsilon", Conv3x3::Winograd4),
            ("sglrp", Conv3x3::Winograd4),
        ] {
            let fast = explain(model, method, &x, variant);
            let direct = explain(model, method, &x, Conv3x3::Direct);
            let what = format!("{model}, {method}, {variant:?}");
            let (r, p) = (
                max_rel(&fast.relevance, &direct.relevance),
                max_rel(&fast.passes, &direct.passes),
            );
            // measured: at most 1.4e-6 (F(2×2, 3×3)) and 3.1e-6 (F(4×4, 3×3))
            assert!(r <= 2e-5 && p <= 2e-5, "{what}: relevance {r}, passes {p}");
            assert!(
                fast.passes != direct.passes,
                "{what}: bit-identical, so the Winograd path did not run"
            );
            assert_eq!(fast.logits, direct.logits, "{what}: logits");
            for ((name, f), (_, d)) in fast.node_sums.iter().zip(&direct.node_sums) {
                for (fi, di) in f.iter().flatten().zip(d.iter().flatten()) {
                    assert!(
                        (fi - di).abs() <= 1e-4 * di.abs().max(1.0),
                        "{what}: node {name}: sum {fi} vs {di}"
                    );
                }
            }
        }
    }
}
