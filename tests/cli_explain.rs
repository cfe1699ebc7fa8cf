//! `lrp-graph explain`, `inspect --method` and `rules`: outputs, and one clear error for bad input.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use lrp_testkit::{Attr, OnnxBuilder};

/// Converts an ONNX fixture into `dir` and returns the graph path.
fn converted(dir: &Path, name: &str) -> PathBuf {
    let ron = dir.join(format!("{name}.ron"));
    let o = lrp(&[
        "convert",
        fixture(&format!("{name}.onnx")).to_str().unwrap(),
        "-o",
        ron.to_str().unwrap(),
        "--no-check",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    ron
}

/// A one-layer classifier `logits = x Wᵀ` with `W = [[1, 0], [−1, 0], [−1, 0], [0, 0]]`.
fn tiny(dir: &Path) -> PathBuf {
    let mut b = OnnxBuilder::new("tiny", 17);
    b.input("x", &[None, Some(2)])
        .initializer("w", &[4, 2], vec![1.0, 0.0, -1.0, 0.0, -1.0, 0.0, 0.0, 0.0])
        .node(
            "Gemm",
            &["x", "w"],
            &["logits"],
            vec![Attr::int("transB", 1)],
        )
        .output("logits");
    let onnx = dir.join("tiny.onnx");
    b.write(&onnx).unwrap();
    let ron = dir.join("tiny.ron");
    let o = lrp(&[
        "convert",
        onnx.to_str().unwrap(),
        "-o",
        ron.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    ron
}

fn npy(dir: &Path, name: &str, shape: &[usize], values: Vec<f32>) -> PathBuf {
    let p = dir.join(name);
    lrp_io::write_npy(
        &p,
        &ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape), values).unwrap(),
    )
    .unwrap();
    p
}

fn explain(graph: &Path, input: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "explain",
        graph.to_str().unwrap(),
        "-i",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    lrp(&args)
}

#[test]
fn explain_writes_relevance_heatmaps_and_report() {
    let dir = tempfile::tempdir().unwrap();
    let ron = converted(dir.path(), "vgg_small");
    let out = dir.path().join("out");
    let input = fixture("vgg_small.input.npy");
    let o = explain(
        &ron,
        &input,
        &out,
        &["--method", "sglrp", "--target", "3,4"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let r = read_npy(&out.join("relevance.npy"));
    assert_eq!(
        r.shape(),
        read_npy(&input).shape(),
        "exactly the input batch's shape"
    );
    assert_eq!(
        files_in(&out),
        [
            "heatmap_0.png",
            "heatmap_1.png",
            "manifest.jsonl",
            "relevance.npy",
            "report.json"
        ]
    );
    let report = read_report(&out);
    let inputs = report["inputs"].as_array().unwrap();
    assert_eq!(inputs[0]["target"], 3);
    assert_eq!(inputs[1]["target"], 4);
    assert_eq!(inputs[0]["top5"].as_array().unwrap().len(), 5);
    assert!(inputs[0]["node_relevance_sums"].as_object().unwrap().len() >= 10);
    assert!(inputs[0]["conservation_gap"].is_array());
    for (i, rec) in inputs.iter().enumerate() {
        let s = rec["relevance_sum"].as_f64().unwrap();
        let m = rec["relevance_max_abs"].as_f64().unwrap();
        assert!(
            s.abs() < 1e-3 * m * r.len() as f64,
            "input {i}: sglrp sums to ~0, got {s}"
        );
    }
    let png = image_size(&out.join("heatmap_0.png"));
    assert_eq!(png, (128, 128), "32 × 32 zoomed ×4");
    assert_eq!(report["conv3x3"], "winograd4", "the default");

    // The same with the direct convolutions: recorded, and the same maps up to rounding.
    let direct = dir.path().join("direct");
    let o = explain(
        &ron,
        &input,
        &direct,
        &[
            "--method",
            "sglrp",
            "--target",
            "3,4",
            "--conv3x3",
            "direct",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let report = read_report(&direct);
    assert_eq!(report["conv3x3"], "direct");
    let d = read_npy(&direct.join("relevance.npy"));
    let scale = d.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (a, b) in r.iter().zip(&d) {
        assert!((a - b).abs() <= 2e-5 * scale, "{a} vs {b}");
    }
}

fn image_size(p: &Path) -> (u32, u32) {
    let bytes = std::fs::read(p).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    (w, h)
}

#[test]
fn inspect_method_prints_the_rule_of_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let ron = converted(dir.path(), "resnet_block");
    let o = lrp(&["inspect", ron.to_str().unwrap(), "--method", "epsilon-plus"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("ZPlus") || text.contains("AlphaBeta(alpha: 1, beta: 0, bias: Split"),
        "{text}"
    );
    assert!(text.contains("Epsilon(epsilon: 1e-6)"), "{text}");
    assert!(!text.contains("BatchNorm "), "BatchNorm is folded: {text}");
    let o = lrp(&["rules"]);
    assert!(o.status.success());
    for name in [
        "AlphaBeta",
        "ZBox",
        "Flat",
        "WSquare",
        "Gamma",
        "sglrp-seq-b",
        "epsilon-gamma-box",
    ] {
        assert!(stdout(&o).contains(name), "{name}");
    }
}

#[test]
fn unknown_method_lists_the_methods() {
    let dir = tempfile::tempdir().unwrap();
    let ron = converted(dir.path(), "mlp");
    let o = explain(
        &ron,
        &fixture("mlp.input.npy"),
        &dir.path().join("o"),
        &["--method", "sglrpp"],
    );
    assert_fails(&o, 2, &["sglrpp", "sglrp-seq-a", "epsilon-plus"]);
}

#[test]
fn rules_file_errors_have_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let ron = converted(dir.path(), "mlp");
    let cases = [
        (
            "(rules: [\n  (select: Op(Dense), rule: Frobnicate),\n])",
            vec!["bad.ron:2:", "unknown rule 'Frobnicate'"],
        ),
        (
            "(rules: [\n  (select: Layer(Dense), rule: Flat),\n])",
            vec!["bad.ron:2:", "Layer"],
        ),
        (
            "(rules: [\n  (select: Op(Dense), rule: Epsilon(eps: 0.1)),\n])",
            vec!["bad.ron:2:", "no parameter 'eps'"],
        ),
        ("(signal: Logit(head_relu: maybe))", vec!["bad.ron:1:"]),
    ];
    for (text, needles) in cases {
        let rules = dir.path().join("bad.ron");
        std::fs::write(&rules, text).unwrap();
        let o = explain(
            &ron,
            &fixture("mlp.input.npy"),
            &dir.path().join("o"),
            &["--rules", rules.to_str().unwrap()],
        );
        assert_fails(&o, 2, &needles);
    }
}

#[test]
fn a_node_no_rule_covers_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let ron = converted(dir.path(), "mlp");
    let rules = dir.path().join("convs.ron");
    std::fs::write(
        &rules,
        "(name: \"convs-only\", rules: [(select: Op(Conv), rule: Epsilon)])",
    )
    .unwrap();
    let o = explain(
        &ron,
        &fixture("mlp.input.npy"),
        &dir.path().join("o"),
        &["--rules", rules.to_str().unwrap()],
    );
    assert_fails(&o, 2, &["convs-only", "fc1_matmul", "(Dense)"]);
}

#[test]
fn targets_bounds_and_inputs_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let ron = converted(dir.path(), "mlp");
    let input = fixture("mlp.input.npy");
    let out = dir.path().join("o");
    assert_fails(
        &explain(&ron, &input, &out, &["--target", "6"]),
        2,
        &["target class 6", "6 classes"],
    );
    assert_fails(
        &explain(&ron, &input, &out, &["--target", "1,2,3"]),
        2,
        &["3 targets", "2 inputs"],
    );
    assert_fails(
        &explain(&ron, &input, &out, &["--target", "cat"]),
        2,
        &["--target", "cat"],
    );
    assert_fails(
        &explain(
            &ron,
            &input,
            &out,
            &["--method", "lrp", "--low", "1", "--high", "1"],
        ),
        2,
        &["--low/--high", "below"],
    );
    assert_fails(
        &explain(&ron, &input, &out, &["--low", "0"]),
        2,
        &["--low and --high"],
    );
    let inf = npy(
        dir.path(),
        "inf.npy",
        &[1, 20],
        (0..20)
            .map(|i| if i == 7 { f32::INFINITY } else { 0.0 })
            .collect(),
    );
    assert_fails(&explain(&ron, &inf, &out, &[]), 2, &["inf.npy"]);
    assert!(!out.join("relevance.npy").exists());
}

#[test]
fn nan_in_the_pass_names_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let ron = tiny(dir.path());
    // x = [0, 1]: every logit is 0, so the Z rule without a stabiliser divides 0 by 0.
    let x = npy(dir.path(), "x.npy", &[1, 2], vec![0.0, 1.0]);
    let rules = dir.path().join("z.ron");
    std::fs::write(
        &rules,
        "(rules: [(select: Op(Dense), rule: Z(stabilizer: ZeroGuard(0.0)))])",
    )
    .unwrap();
    let o = explain(
        &ron,
        &x,
        &dir.path().join("o"),
        &["--rules", rules.to_str().unwrap(), "--target", "0"],
    );
    assert_fails(
        &o,
        2,
        &[
            "node 'Gemm_0' (Dense)",
            "rule Z(stabilizer: ZeroGuard(0))",
            "NaN",
        ],
    );
}

#[test]
fn zero_dual_sum_is_handled_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let ron = tiny(dir.path());
    // x = [1, 0]: logits [1, −1, −1, 0]; under head_relu every other class is ≤ 0, so ΣO = 0.
    let x = npy(dir.path(), "x.npy", &[1, 2], vec![1.0, 0.0]);
    let out = dir.path().join("o");
    let rules = dir.path().join("r.ron");
    std::fs::write(
        &rules,
        "(signal: Sglrp(target_offset: 1e-8, head_relu: true), rules: [(select: Op(Dense), rule: Epsilon(epsilon: 1e-9))])",
    )
    .unwrap();
    let o = explain(&ron, &x, &out, &["--rules", rules.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("ΣO = 0"), "{}", stderr(&o));
    let report = std::fs::read_to_string(out.join("report.json")).unwrap();
    assert!(report.contains("ΣO = 0"), "{report}");
    let r = read_npy(&out.join("relevance.npy"));
    assert!(r.iter().all(|v| v.is_finite()));
    assert!(r[[0, 0]] > 0.0, "the map is T alone: {r:?}");
}

#[test]
fn keep_writes_the_relevance_at_matching_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let ron = converted(dir.path(), "vgg_small");
    let out = dir.path().join("out");
    let input = fixture("vgg_small.input.npy");
    let o = explain(
        &ron,
        &input,
        &out,
        &[
            "--method",
            "sglrp",
            "--target",
            "3,4",
            "--keep",
            "*/Conv",
            "--keep",
            "/classifier/classifier.3/Gemm",
            "--batch-size",
            "1",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let report = read_report(&out);
    let kept = report["kept"].as_object().unwrap();
    assert_eq!(kept.len(), 4, "{kept:?}");
    // Two inputs, two passes (target, dual), the node's own shape.
    let first = read_npy(&out.join(kept["/features/features.0/Conv"].as_str().unwrap()));
    assert_eq!(first.shape()[..2], [2, 2]);
    assert_eq!(
        kept["/features/features.0/Conv"],
        "nodes/_features_features.0_Conv.npy"
    );
    // At the logits: the target pass is non-zero at the target only, the dual pass only
    // elsewhere.
    let logits = read_npy(&out.join(kept["/classifier/classifier.3/Gemm"].as_str().unwrap()));
    assert_eq!(logits.shape(), [2, 2, 10]);
    for (i, t) in [3usize, 4].into_iter().enumerate() {
        let row = |p: usize| -> Vec<f32> { (0..10).map(|c| logits[[i, p, c]]).collect() };
        let (tp, op) = (row(0), row(1));
        assert!(tp[t] > 0.0 && op[t] == 0.0, "input {i}: {tp:?} {op:?}");
        // (head_relu: the dual pass is 0 where a logit is not positive.)
        assert!(
            (0..10)
                .filter(|&c| c != t)
                .all(|c| tp[c] == 0.0 && op[c] >= 0.0),
            "input {i}: {tp:?} {op:?}"
        );
        assert!(op.iter().sum::<f32>() > 0.0, "input {i}: {op:?}");
    }
    // A glob that selects nothing: one clear error naming the nodes.
    let o = explain(&ron, &input, &out, &["--keep", "conv*"]);
    assert_fails(&o, 2, &["--keep 'conv*'", "/features/features.0/Conv"]);
}
