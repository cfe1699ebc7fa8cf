//! GammaByDepth through the library and through the `lrp-graph-plus` command line.

use std::path::{Path, PathBuf};
use std::process::Command;

use lrp_graph::engine::{ExplainOptions, Explainer, Explanation};
use lrp_graph::rules::{Registry, RuleConfig};
use lrp_graph::runtime::Device;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/onnx")
        .join(name)
}

fn config(rule: &str, reg: &Registry) -> RuleConfig {
    let text = format!(
        "(name: \"t\", signal: Logit(head_relu: false), conventions: (stabilizer: SignEpsilon(1e-6)), rules: [(select: Ops([Conv, Dense]), rule: {rule})])"
    );
    RuleConfig::parse(&text, "test.ron", reg).unwrap()
}

fn explain(model: &str, rule: &str) -> Explanation {
    let reg = lrp_plugin_example::registry();
    let graph = lrp_graph::import::import_onnx(&fixture(&format!("{model}.onnx")))
        .unwrap()
        .graph;
    let mut ex = Explainer::new(graph, config(rule, &reg), &reg, Device::Cpu, Some(1)).unwrap();
    let x = lrp_graph::io::read_npy(&fixture(&format!("{model}.input.npy"))).unwrap();
    let keep = ex.nodes_matching(&["*"]).unwrap();
    ex.explain(
        &x,
        &ExplainOptions {
            keep,
            ..Default::default()
        },
    )
    .unwrap()
}

fn max_rel_diff(a: &ndarray::ArrayD<f32>, b: &ndarray::ArrayD<f32>) -> f32 {
    let scale = b
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// With growth 1 every layer gets the same γ: the built-in non-generalised Gamma.
#[test]
fn growth_one_is_the_builtin_gamma() {
    for model in ["vgg_small", "mlp", "resnet_block"] {
        let ours = explain(model, "GammaByDepth(gamma: 0.25, growth: 1.0)");
        let builtin = explain(model, "Gamma(gamma: 0.25, generalized: false)");
        let d = max_rel_diff(&ours.relevance, &builtin.relevance);
        assert!(d < 1e-5, "{model}: {d}");
        assert!(ours.relevance.iter().any(|&v| v != 0.0));
    }
}

/// γ per layer: the last layer gets gamma, each layer before it growth times more; a growth
/// other than 1 changes the relevance.
#[test]
fn gamma_grows_towards_the_input() {
    let reg = lrp_plugin_example::registry();
    let graph = lrp_graph::import::import_onnx(&fixture("mlp.onnx"))
        .unwrap()
        .graph;
    let c = config("GammaByDepth(gamma: 0.1, growth: 3.0)", &reg);
    let text = lrp_graph::engine::snapshot::assignment_text(&graph, &c, &reg).unwrap();
    assert!(
        text.contains("GammaByDepth(gamma: 0.1, growth: 3, stabilizer: SignEpsilon(1e-6))"),
        "{text}"
    );
    let a = explain("vgg_small", "GammaByDepth(gamma: 0.1, growth: 3.0)");
    let b = explain("vgg_small", "GammaByDepth(gamma: 0.1, growth: 1.0)");
    // The last Dense layer's γ is 0.1 in both: the relevance at its input (the output of the
    // node before it) is the same ...
    let before_last = |e: &Explanation| e.node_sums.iter().rev().nth(1).unwrap().clone();
    assert_eq!(before_last(&a), before_last(&b));
    // ... and the input relevance differs.
    assert!(max_rel_diff(&a.relevance, &b.relevance) > 1e-3);
}

#[test]
fn bad_parameters_are_refused_with_the_rule_name() {
    let reg = lrp_plugin_example::registry();
    let graph = lrp_graph::import::import_onnx(&fixture("mlp.onnx"))
        .unwrap()
        .graph;
    for (rule, needle) in [
        ("GammaByDepth(growth: 0.0)", "growth = 0"),
        ("GammaByDepth(gamma: -1.0)", "gamma = -1"),
        ("GammaByDepth(gama: 0.1)", "no parameter 'gama'"),
    ] {
        let text = format!("(name: \"t\", rules: [(select: Op(Dense), rule: {rule})])");
        let msg = match RuleConfig::parse(&text, "bad.ron", &reg) {
            Err(e) => e.to_string(),
            Ok(c) => lrp_graph::engine::snapshot::assignment_text(&graph, &c, &reg)
                .expect_err(rule)
                .to_string(),
        };
        assert!(
            msg.contains(needle) && msg.contains("GammaByDepth"),
            "{rule}: {msg}"
        );
    }
}

/// Runs `lrp-graph-plus` with `args`; it must succeed. Returns its stdout.
fn plus(args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_lrp-graph-plus"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The full command line with the plugin registered: `rules` lists it, `explain --rules` uses
/// it from a RON file.
#[test]
fn the_command_line_knows_the_plugin() {
    assert!(plus(&["rules".as_ref()]).contains("GammaByDepth"));

    let dir = tempfile::tempdir().unwrap();
    let graph = dir.path().join("vgg_small.ron");
    let model = fixture("vgg_small.onnx");
    plus(&[
        "convert".as_ref(),
        model.as_ref(),
        "-o".as_ref(),
        graph.as_ref(),
    ]);
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/gamma-by-depth.ron");
    let out_dir = dir.path().join("out");
    let input = fixture("vgg_small.input.npy");
    plus(&[
        "explain".as_ref(),
        graph.as_ref(),
        "--input".as_ref(),
        input.as_ref(),
        "--rules".as_ref(),
        rules.as_ref(),
        "--out".as_ref(),
        out_dir.as_ref(),
    ]);
    let r = lrp_graph::io::read_npy(&out_dir.join("relevance.npy")).unwrap();
    assert!(r.iter().any(|&v| v != 0.0) && r.iter().all(|v| v.is_finite()));
    let report = std::fs::read_to_string(out_dir.join("report.json")).unwrap();
    assert!(report.contains("gamma-by-depth"));

    // inspect shows the rule with its parameters.
    let text = plus(&[
        "inspect".as_ref(),
        graph.as_ref(),
        "--rules".as_ref(),
        rules.as_ref(),
    ]);
    assert!(text.contains("GammaByDepth(gamma: 0.05, growth: 2"));
}
