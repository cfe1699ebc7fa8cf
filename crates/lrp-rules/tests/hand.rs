//! Rules on hand-computed examples.

use std::collections::BTreeMap;

use lrp_ir::{Graph, GraphDef, InputDef, Layout, NodeDef, Op, Weights};
use lrp_rules::{BasicRule, BiasMode, Bounds, NodeContext, Registry, Rule, RuleConfig, Stabilizer};
use ndarray::{ArrayD, IxDyn, array};

/// One Dense node `y = x Wᵀ + b` on an `[in]` input.
fn dense(w: &[&[f32]], b: Option<&[f32]>) -> Graph {
    let out = w.len();
    let inp = w[0].len();
    let mut weights = Weights::new();
    weights.insert(
        "w",
        ArrayD::from_shape_vec(
            IxDyn(&[out, inp]),
            w.iter().flat_map(|r| r.iter().copied()).collect(),
        )
        .unwrap(),
    );
    let mut params = BTreeMap::from([("weight".to_string(), "w".to_string())]);
    if let Some(b) = b {
        weights.insert(
            "b",
            ArrayD::from_shape_vec(IxDyn(&[out]), b.to_vec()).unwrap(),
        );
        params.insert("bias".into(), "b".into());
    }
    let def = GraphDef {
        format: 1,
        name: "t".into(),
        weights: "t.safetensors".into(),
        input: InputDef {
            name: "x".into(),
            shape: vec![inp],
            layout: Layout::Other,
            preprocess: None,
        },
        output: "fc".into(),
        nodes: vec![NodeDef {
            name: "fc".into(),
            op: Op::Dense,
            inputs: vec!["x".into()],
            params,
        }],
        labels: None,
    };
    Graph::new(def, weights).unwrap()
}

fn forward(g: &Graph, x: &ArrayD<f32>) -> ArrayD<f32> {
    let w = g.param(0, "weight").unwrap();
    let mut z = ArrayD::zeros(IxDyn(&[x.shape()[0], w.shape()[0]]));
    for n in 0..x.shape()[0] {
        for j in 0..w.shape()[0] {
            let mut s = g.param(0, "bias").map(|b| b[[j]]).unwrap_or(0.0);
            for i in 0..w.shape()[1] {
                s += x[[n, i]] * w[[j, i]];
            }
            z[[n, j]] = s;
        }
    }
    z
}

/// `f` on the context of node 0 of `g` (one image, input `x`, its forward output).
fn with_context<T>(g: &Graph, x: &[f32], f: impl FnOnce(&NodeContext<'_>) -> T) -> T {
    let x = ArrayD::from_shape_vec(IxDyn(&[1, x.len()]), x.to_vec()).unwrap();
    let z = forward(g, &x);
    let ctx = NodeContext {
        graph: g,
        id: 0,
        inputs: vec![x.view()],
        output: z.view(),
        maps: 1,
        bounds: None,
    };
    f(&ctx)
}

fn apply(rule: &dyn Rule, g: &Graph, x: &[f32], r: &[f32]) -> Vec<f32> {
    let r = ArrayD::from_shape_vec(IxDyn(&[1, r.len()]), r.to_vec()).unwrap();
    with_context(g, x, |ctx| {
        rule.relevance(ctx, r.view()).unwrap()[0]
            .iter()
            .copied()
            .collect()
    })
}

fn close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-6 * y.abs().max(1.0), "{a:?} vs {b:?}");
    }
}

#[test]
fn innvestigate_issue_273() {
    // SPEC.md: w = [1, −1], b = −1, x = [1, 1], R = z = −1.
    let g = dense(&[&[1.0, -1.0]], Some(&[-1.0]));
    let zg = Stabilizer::ZeroGuard(1e-7);
    close(
        &apply(
            &BasicRule::alpha_beta(1.0, 0.0, BiasMode::Full, zg),
            &g,
            &[1.0, 1.0],
            &[-1.0],
        ),
        &[-1e7, 0.0],
    );
    close(
        &apply(
            &BasicRule::alpha_beta(2.0, 1.0, BiasMode::Full, zg),
            &g,
            &[1.0, 1.0],
            &[-1.0],
        ),
        &[-2e7, 0.5],
    );
}

#[test]
fn z_and_epsilon() {
    let g = dense(&[&[1.0, 2.0], &[-1.0, 1.0]], Some(&[0.5, 0.0]));
    // x = [1, 1]: z = [3.5, 0]; R = [7, 2].
    // Z with ZeroGuard: s = [2, 2/1e-7]; R_i = x_i Σ_j w_ij s_j.
    let r = apply(
        &BasicRule::z(Stabilizer::ZeroGuard(1e-7)),
        &g,
        &[1.0, 1.0],
        &[7.0, 2.0],
    );
    close(&r, &[2.0 - 2e7, 4.0 + 2e7]);
    // Epsilon(1): s = [7/4.5, 2/1] (sign(0) = +1).
    let r = apply(&BasicRule::epsilon(1.0), &g, &[1.0, 1.0], &[7.0, 2.0]);
    let s = [7.0 / 4.5, 2.0];
    close(&r, &[s[0] - s[1], 2.0 * s[0] + s[1]]);
}

#[test]
fn split_bias_alpha_beta() {
    // w = [2, −1], b = 1, x = [1, 2]: A = 2 + b⁺ = 3, I = −2 + b⁻ = −2.
    let g = dense(&[&[2.0, -1.0]], Some(&[1.0]));
    let r = apply(
        &BasicRule::alpha_beta(2.0, 1.0, BiasMode::Split, Stabilizer::SignEpsilon(0.0)),
        &g,
        &[1.0, 2.0],
        &[6.0],
    );
    // α x⁺w⁺ R/A − β x⁺w⁻ R/I = [2·2·6/3, −(2·−1·6/−2)] = [8, −6].
    close(&r, &[8.0, -6.0]);
}

#[test]
fn flat_wsquare_and_zbox() {
    let g = dense(&[&[1.0, -3.0], &[2.0, 0.0]], None);
    let s = Stabilizer::SignEpsilon(0.0);
    // Flat: each unit spreads R_j evenly over its 2 inputs.
    close(
        &apply(&BasicRule::flat(s), &g, &[5.0, -7.0], &[2.0, 4.0]),
        &[3.0, 3.0],
    );
    // WSquare: unit 0: w² = [1, 9]/10; unit 1: [4, 0]/4.
    close(
        &apply(&BasicRule::w_square(s), &g, &[5.0, -7.0], &[10.0, 4.0]),
        &[1.0 + 4.0, 9.0],
    );
    // z^B with l = 0, h = 1, one unit w = [1, −3], x = [1, 0.5]:
    // Z = (1 − 1.5) − (0·1) − (1·−3) = 2.5; s = R/2.5;
    // R_i = x_i w_i s − l w⁺_i s − h w⁻_i s = [s, −1.5 s + 3 s].
    let g1 = dense(&[&[1.0, -3.0]], None);
    let b = Bounds {
        low: vec![0.0],
        high: vec![1.0],
    };
    let r = apply(&BasicRule::z_box(b, s), &g1, &[1.0, 0.5], &[5.0]);
    close(&r, &[2.0, 3.0]);
    assert!(
        (r.iter().sum::<f32>() - 5.0).abs() < 1e-6,
        "z^B conserves: {r:?}"
    );
}

#[test]
fn gamma_on_positive_inputs_is_z_with_boosted_weights() {
    let g = dense(&[&[1.0, -1.0]], None);
    // x = [2, 1]: z = 1 > 0; W + γW⁺ = [1.5, −1]; Z = 3 − 1 = 2; R = [2·1.5, −1]·R/2.
    let r = apply(
        &BasicRule::gamma(0.5, true, Stabilizer::SignEpsilon(0.0)),
        &g,
        &[2.0, 1.0],
        &[4.0],
    );
    close(&r, &[6.0, -2.0]);
    let plain = apply(
        &BasicRule::gamma(0.5, false, Stabilizer::SignEpsilon(0.0)),
        &g,
        &[2.0, 1.0],
        &[4.0],
    );
    close(&plain, &[6.0, -2.0]);
}

#[test]
fn two_maps_per_image_travel_together() {
    let g = dense(&[&[1.0, 2.0]], Some(&[0.0]));
    let x = array![[1.0f32, 1.0]].into_dyn();
    let z = forward(&g, &x);
    let r = array![[3.0f32], [-6.0]].into_dyn();
    let ctx = NodeContext {
        graph: &g,
        id: 0,
        inputs: vec![x.view()],
        output: z.view(),
        maps: 2,
        bounds: None,
    };
    let out = BasicRule::epsilon(0.0).relevance(&ctx, r.view()).unwrap();
    assert_eq!(out[0], array![[1.0f32, 2.0], [-2.0, -4.0]].into_dyn());
}

#[test]
fn config_errors_name_line_and_column() {
    let reg = Registry::with_builtins();
    let parse_err = |text: &str| {
        RuleConfig::parse(text, "r.ron", &reg)
            .unwrap_err()
            .to_string()
    };
    let bad_rule = "(\n  rules: [\n    (select: Op(Conv), rule: Frob(x: 1.0)),\n  ],\n)";
    let e = parse_err(bad_rule);
    assert!(
        e.starts_with("r.ron:3:") && e.contains("unknown rule 'Frob'") && e.contains("AlphaBeta"),
        "{e}"
    );
    let bad_param = "(rules: [(select: Op(Conv), rule: Epsilon(eps: 0.1))])";
    let e = parse_err(bad_param);
    assert!(
        e.contains("r.ron:1:") && e.contains("no parameter 'eps'") && e.contains("epsilon"),
        "{e}"
    );
    let bad_selector = "(rules: [(select: Frist, rule: Flat)])";
    let e = parse_err(bad_selector);
    assert!(e.contains("r.ron:1:") && e.contains("Frist"), "{e}");
    let bad_value = "(rules: [(select: Op(Conv), rule: AlphaBeta(bias: Half))])";
    let e = parse_err(bad_value);
    assert!(
        e.contains("'Half' is not one of Full, Split, Ignore"),
        "{e}"
    );
    let ok = "(signal: Sglrp(target_offset: 1e-8), rules: [(select: Op(Dense), rule: Flat), (select: Op(Conv), rule: Epsilon)])";
    let c = RuleConfig::parse(ok, "ok.ron", &reg).unwrap();
    assert_eq!(c.rules.len(), 2);
}

#[test]
fn uncovered_dense_is_an_error_naming_the_node() {
    let reg = Registry::with_builtins();
    let g = dense(&[&[1.0]], None);
    let c = RuleConfig::parse(
        "(name: \"convs-only\", rules: [(select: Op(Conv), rule: Flat)])",
        "x",
        &reg,
    )
    .unwrap();
    let e = c.assign(&g, &reg).unwrap_err().to_string();
    assert!(
        e.contains("convs-only") && e.contains("node 'fc' (Dense)"),
        "{e}"
    );
}

/// A 3 → 2 dense layer with bias and one rule of every built-in term shape: one term, two
/// terms (αβ), bounds, constant inputs and weights, an output mask (generalised γ).
fn every_basic_rule() -> (Graph, Vec<Box<dyn Rule>>) {
    let g = dense(
        &[&[0.5, -1.0, 2.0], &[-0.25, 0.75, 1.0]],
        Some(&[0.1, -0.2]),
    );
    let s = Stabilizer::SignEpsilon(1e-6);
    let b = Bounds {
        low: vec![-2.0],
        high: vec![2.0],
    };
    let rules: Vec<Box<dyn Rule>> = vec![
        Box::new(BasicRule::z(s)),
        Box::new(BasicRule::epsilon(0.1)),
        Box::new(BasicRule::alpha_beta(2.0, 1.0, BiasMode::Full, s)),
        Box::new(BasicRule::alpha_beta(1.0, 0.0, BiasMode::Split, s)),
        Box::new(BasicRule::z_box(b, s)),
        Box::new(BasicRule::flat(s)),
        Box::new(BasicRule::w_square(s)),
        Box::new(BasicRule::gamma(0.25, true, s)),
    ];
    (g, rules)
}

#[test]
fn every_linear_rule_is_linear_in_the_output_relevance() {
    let (g, rules) = every_basic_rule();
    let x = [1.5, -0.5, 0.25];
    for rule in &rules {
        let r1 = apply(rule.as_ref(), &g, &x, &[0.7, -1.3]);
        let r2 = apply(rule.as_ref(), &g, &x, &[2.1, -3.9]);
        let sum = apply(rule.as_ref(), &g, &x, &[2.8, -5.2]);
        for i in 0..3 {
            assert!(
                (3.0 * r1[i] - r2[i]).abs() <= 1e-5 * r2[i].abs().max(1.0),
                "{}: {r1:?} {r2:?}",
                rule.describe()
            );
            assert!(
                (r1[i] + r2[i] - sum[i]).abs() <= 1e-5 * sum[i].abs().max(1.0),
                "{}",
                rule.describe()
            );
        }
    }
}

#[test]
fn handing_the_relevance_over_gives_the_same_result() {
    // `relevance_owned` (which the relevance pass calls, and the built-ins divide in place)
    // against `relevance` on a view.
    let (g, rules) = every_basic_rule();
    let r = ArrayD::from_shape_vec(IxDyn(&[1, 2]), vec![0.7, -1.3]).unwrap();
    with_context(&g, &[1.5, -0.5, 0.25], |ctx| {
        for rule in &rules {
            let by_view = rule.relevance(ctx, r.view()).unwrap();
            let owned = rule.relevance_owned(ctx, r.clone()).unwrap();
            assert_eq!(by_view, owned, "{}", rule.describe());
        }
    });
}

#[test]
fn crop_moves_relevance_back_into_place() {
    let def = GraphDef {
        format: 1,
        name: "t".into(),
        weights: "t.safetensors".into(),
        input: InputDef {
            name: "x".into(),
            shape: vec![1, 3, 4],
            layout: Layout::Other,
            preprocess: None,
        },
        output: "crop".into(),
        nodes: vec![NodeDef {
            name: "crop".into(),
            op: Op::Crop {
                crops: vec![0, 0, 1, 1, 0, 0, 1, 2],
            },
            inputs: vec!["x".into()],
            params: BTreeMap::new(),
        }],
        labels: None,
    };
    let g = Graph::new(def, Weights::new()).unwrap();
    let x = ArrayD::<f32>::zeros(IxDyn(&[1, 1, 3, 4]));
    let z = ArrayD::<f32>::zeros(IxDyn(&[1, 1, 1, 1]));
    let ctx = NodeContext {
        graph: &g,
        id: 0,
        inputs: vec![x.view()],
        output: z.view(),
        maps: 1,
        bounds: None,
    };
    let r = array![[[[5.0f32]]]].into_dyn();
    let out = lrp_rules::structural::Move
        .relevance(&ctx, r.view())
        .unwrap();
    // The one kept element is row 1, column 1; everything cropped gets 0.
    let mut want = ArrayD::<f32>::zeros(IxDyn(&[1, 1, 3, 4]));
    want[[0, 0, 1, 1]] = 5.0;
    assert_eq!(out[0], want);
}

#[test]
fn mapped_dense_weights_give_the_cached_result() {
    // A layer with weights of both signs and inputs of both signs, so every branch is live.
    let w: Vec<Vec<f32>> = (0..7)
        .map(|o| (0..9).map(|i| ((o * 9 + i) as f32 * 0.7).sin()).collect())
        .collect();
    let rows: Vec<&[f32]> = w.iter().map(|r| r.as_slice()).collect();
    let g = dense(&rows, Some(&[0.1, -0.2, 0.3, -0.1, 0.05, 0.2, -0.3]));
    let x: Vec<f32> = (0..9).map(|i| (i as f32 * 1.3).cos()).collect();
    let r: Vec<f32> = (0..7).map(|j| 1.0 + j as f32 * 0.1).collect();
    let zg = Stabilizer::ZeroGuard(1e-7);
    let rules = [
        BasicRule::alpha_beta(2.0, 1.0, BiasMode::Split, zg),
        BasicRule::gamma(0.25, false, zg),
        // Generalised: W + γW⁺ where z > 0 and W + γW⁻ where z < 0 (both Gamma modifiers and
        // both output masks).
        BasicRule::gamma(0.25, true, zg),
        BasicRule::w_square(zg),
        BasicRule::z_box(
            Bounds {
                low: vec![-1.0],
                high: vec![1.0],
            },
            zg,
        ),
    ];
    // Non-negative inputs too: one live branch for z⁺ and α1β0, whose mapped weight serves the
    // denominators, the division and the transpose in one pass.
    let x_pos: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    for (rule, x) in rules
        .iter()
        .flat_map(|rule| [(rule, &x), (rule, &x_pos)])
        .chain([
            (&BasicRule::alpha_beta(1.0, 0.0, BiasMode::Full, zg), &x_pos),
            (
                &BasicRule::alpha_beta(1.0, 0.0, BiasMode::Split, zg),
                &x_pos,
            ),
        ])
    {
        let cached = apply(rule, &g, x, &r);
        let mapped = BasicRule {
            mapped_min_elements: 0,
            ..rule.clone()
        };
        close(&apply(&mapped, &g, x, &r), &cached);
        // And with f32 denominators (the other forward path).
        let plain = BasicRule {
            f64_denominators: false,
            ..rule.clone()
        };
        let mapped = BasicRule {
            mapped_min_elements: 0,
            ..plain.clone()
        };
        close(&apply(&mapped, &g, x, &r), &apply(&plain, &g, x, &r));
    }
}
