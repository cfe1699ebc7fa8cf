//! Shared helpers of the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ndarray::ArrayD;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A file under `tests/fixtures/onnx/`.
pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/onnx").join(name)
}

/// The ONNX fixtures that come with an input and ORT's expected output.
pub const FIXTURES: &[&str] = &[
    "vgg_small",
    "fixed_batch",
    "resnet_block",
    "grouped_depthwise",
    "mlp",
    "conv_variety",
];

/// Runs the `lrp-graph` binary with `args`.
pub fn lrp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lrp-graph"))
        .args(args)
        .output()
        .expect("the binary runs")
}

/// Stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts a failed run: the exit code, and exactly one `error:` line on stderr containing
/// every one of `needles`.
pub fn assert_fails(o: &Output, code: i32, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "one error line expected, stderr: {err}");
    for n in needles {
        assert!(lines[0].contains(n), "'{n}' not in: {}", lines[0]);
    }
    assert!(!err.contains("panicked"), "{err}");
}

/// The `report.json` an explanation wrote into `dir`.
pub fn read_report(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("report.json")).expect("report.json written");
    serde_json::from_str(&text).expect("report.json is JSON")
}

/// Reads an f32 `.npy`.
pub fn read_npy(path: &Path) -> ArrayD<f32> {
    lrp_io::read_npy(path).expect("readable npy")
}

/// max |a − b| and max |b|.
pub fn max_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> (f32, f32) {
    assert_eq!(a.shape(), b.shape());
    let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    let s = b.iter().fold(0f32, |m, y| m.max(y.abs()));
    (d, s)
}

/// Files in a folder (names), sorted.
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Explains the input of fixture `model` with `config` (one thread), keeping every node's
/// relevance.
pub fn explain_fixture(
    model: &str,
    config: lrp_rules::RuleConfig,
    registry: &lrp_rules::Registry,
) -> Result<lrp_engine::Explanation, lrp_engine::ExplainError> {
    let graph = lrp_import::import_onnx(&fixture(&format!("{model}.onnx")))
        .expect("fixture imports")
        .graph;
    let x = read_npy(&fixture(&format!("{model}.input.npy")));
    let mut ex =
        lrp_engine::Explainer::new(graph, config, registry, lrp_runtime::Device::Cpu, Some(1))?;
    let keep = ex.nodes_matching(&["*"])?;
    ex.explain(
        &x,
        &lrp_engine::ExplainOptions {
            keep,
            ..Default::default()
        },
    )
}

/// The built-in rules and `rule` under `name` (every use of the name gets this one instance,
/// so a test can read its counters afterwards).
pub fn registry_with(name: &str, rule: std::sync::Arc<dyn lrp_rules::Rule>) -> lrp_rules::Registry {
    let mut reg = lrp_rules::Registry::with_builtins();
    reg.register(name, "a test rule", vec![], move |_, _| Ok(rule.clone()))
        .expect("a new rule name");
    reg
}

/// Explains fixture `vgg_small` with the SGLRP signal and the rules `rules` (the entries of a
/// RON `rules: [...]` list), as [`explain_fixture`] does; errors as text.
pub fn explain_vgg_small(
    rules: &str,
    registry: &lrp_rules::Registry,
) -> Result<lrp_engine::Explanation, String> {
    let text = format!("(name: \"t\", signal: Sglrp(), rules: [{rules}])");
    let config =
        lrp_rules::RuleConfig::parse(&text, "t.ron", registry).map_err(|e| e.to_string())?;
    explain_fixture("vgg_small", config, registry).map_err(|e| e.to_string())
}

/// Five images from fixture `model`'s two: the originals and three blends.
pub fn five_images(model: &str) -> ArrayD<f32> {
    use ndarray::Axis;
    let x = read_npy(&fixture(&format!("{model}.input.npy")));
    let (a, b) = (x.index_axis(Axis(0), 0), x.index_axis(Axis(0), 1));
    let blends = [
        a.to_owned(),
        b.to_owned(),
        &a * 0.5 + &b * 0.5,
        &a * 1.5 - &b * 0.25,
        &b * -0.75,
    ];
    let views: Vec<_> = blends
        .iter()
        .map(|v| v.view().insert_axis(Axis(0)))
        .collect();
    ndarray::concatenate(Axis(0), &views).unwrap()
}

/// An explainer of fixture `model` with the built-in preset `method` (one thread).
pub fn preset_explainer(model: &str, method: &str) -> lrp_engine::Explainer {
    let reg = lrp_rules::Registry::with_builtins();
    let graph = lrp_import::import_onnx(&fixture(&format!("{model}.onnx")))
        .expect("fixture imports")
        .graph;
    let config = lrp_rules::presets::preset(method, &reg).expect("a preset");
    lrp_engine::Explainer::new(graph, config, &reg, lrp_runtime::Device::Cpu, Some(1))
        .unwrap_or_else(|e| panic!("{model}, {method}: {e}"))
}

/// The z^B box [−3, 3] for every channel, wide enough for the fixtures' blended images.
pub fn wide_bounds() -> lrp_rules::Bounds {
    lrp_rules::Bounds {
        low: vec![-3.0],
        high: vec![3.0],
    }
}
