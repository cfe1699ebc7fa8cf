//! Rules written as data (`Basic(terms: ...)` in a RON configuration) give exactly the
//! results of the built-in rules they spell out, on every Conv and Dense layer of the fixture
//! networks; malformed terms are refused with the rule's name.

mod common;

use common::*;
use lrp_engine::Explanation;
use lrp_import::import_onnx;
use lrp_rules::{Registry, RuleConfig};

/// `(built-in rule, the same rule as Basic terms)`.
const PAIRS: &[(&str, &str)] = &[
    (
        "Epsilon(epsilon: 0.01)",
        "Basic(terms: [(branches: [()])], stabilizer: SignEpsilon(0.01))",
    ),
    (
        "ZPlus(bias: Split)",
        "Basic(terms: [(branches: [(input: Positive, param: Positive), (input: Negative, param: Negative)], bias: Positive)])",
    ),
    (
        "AlphaBeta(alpha: 2.0, beta: 1.0, bias: Split)",
        "Basic(terms: [
            (coef: 2.0, branches: [(input: Positive, param: Positive), (input: Negative, param: Negative)], bias: Positive),
            (coef: -1.0, branches: [(input: Positive, param: Negative), (input: Negative, param: Positive)], bias: Negative),
        ])",
    ),
    (
        "Gamma(gamma: 0.25)",
        "Basic(terms: [
            (branches: [(input: Positive, param: Gamma(gamma: 0.25, positive: true)), (input: Negative, param: Gamma(gamma: 0.25, positive: false))],
             bias: Gamma(gamma: 0.25, positive: true), mask: Positive),
            (branches: [(input: Positive, param: Gamma(gamma: 0.25, positive: false)), (input: Negative, param: Gamma(gamma: 0.25, positive: true))],
             bias: Gamma(gamma: 0.25, positive: false), mask: Negative),
        ])",
    ),
    (
        "WSquare",
        "Basic(terms: [(branches: [(input: Ones, param: Squared)], bias: None)])",
    ),
    (
        "Flat",
        "Basic(terms: [(branches: [(input: Ones, param: Ones)], bias: None)])",
    ),
    (
        "ZBox(low: -1.0, high: 2.0)",
        "Basic(terms: [(branches: [(input: MinusLow, param: Positive), (input: MinusHigh, param: Negative)], bias: None)], low: -1.0, high: 2.0)",
    ),
];

fn config(rule: &str, reg: &Registry) -> RuleConfig {
    let text = format!(
        "(name: \"t\", signal: Logit(head_relu: false), conventions: (stabilizer: SignEpsilon(1e-6)), rules: [(select: Ops([Conv, Dense]), rule: {rule})])"
    );
    RuleConfig::parse(&text, "test.ron", reg).unwrap_or_else(|e| panic!("{rule}: {e}"))
}

fn explain(model: &str, rule: &str) -> Explanation {
    let reg = Registry::with_builtins();
    explain_fixture(model, config(rule, &reg), &reg).unwrap()
}

#[test]
fn basic_terms_reproduce_the_builtins_exactly() {
    for model in ["vgg_small", "resnet_block", "mlp"] {
        for (builtin, basic) in PAIRS {
            let a = explain(model, builtin);
            let b = explain(model, basic);
            assert!(
                a.relevance.iter().any(|&v| v != 0.0),
                "{model} {builtin}: all zero"
            );
            assert_eq!(a.relevance, b.relevance, "{model}: {builtin} vs {basic}");
            assert_eq!(a.kept.len(), b.kept.len());
            for ((na, ra), (nb, rb)) in a.kept.iter().zip(&b.kept) {
                assert_eq!(na, nb);
                assert_eq!(ra, rb, "{model} node {na}: {builtin} vs {basic}");
            }
        }
    }
}

#[test]
fn zbox_equals_the_specs_three_branch_form() {
    // SPEC.md writes z^B as x·W − l·W⁺ − h·W⁻; the built-in evaluates the equal
    // (x − l)·W⁺ + (x − h)·W⁻. Same relevance up to rounding.
    let spec = "Basic(terms: [(branches: [(), (sign: -1.0, input: Low, param: Positive), (sign: -1.0, input: High, param: Negative)], bias: None)], low: -1.0, high: 2.0)";
    for model in ["vgg_small", "resnet_block", "mlp"] {
        let a = explain(model, "ZBox(low: -1.0, high: 2.0)");
        let b = explain(model, spec);
        let scale = b.relevance.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = a
            .relevance
            .iter()
            .zip(&b.relevance)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(scale > 0.0, "{model}: all zero");
        assert!(diff <= 1e-5 * scale, "{model}: {diff} of {scale}");
    }
}

#[test]
fn a_changed_term_changes_the_result() {
    let a = explain("vgg_small", "ZPlus(bias: Split)");
    let b = explain(
        "vgg_small",
        "Basic(terms: [(coef: 1.5, branches: [(input: Positive, param: Positive)], bias: Positive)])",
    );
    assert_ne!(a.relevance, b.relevance);
}

#[test]
fn the_description_spells_out_the_terms() {
    let reg = Registry::with_builtins();
    let c = config(
        "Basic(terms: [(branches: [(input: Ones, param: Squared)], bias: None)])",
        &reg,
    );
    let graph = import_onnx(&fixture("mlp.onnx")).unwrap().graph;
    let (canonical, _) = lrp_engine::canonicalize(graph, &c).unwrap();
    let text = c.assign(&canonical, &reg).unwrap().describe(&canonical);
    assert!(
        text.contains(
            "Basic(terms: [(coef: 1, branches: [(sign: 1, input: Ones, param: Squared)], bias: None, mask: All)], stabilizer: SignEpsilon(1e-6))"
        ),
        "{text}"
    );
}

#[test]
fn malformed_terms_are_refused_with_the_rule_name() {
    let reg = Registry::with_builtins();
    for (rule, needle) in [
        ("Basic", "'terms' is required"),
        ("Basic(terms: [])", "at least one term"),
        ("Basic(terms: [(branches: [])])", "at least one branch"),
        ("Basic(terms: [(branches: [(input: Sideways)])])", "terms"),
        ("Basic(terms: [(branches: [()], colour: 3)])", "terms"),
        (
            "Basic(terms: [(branches: [()])], low: 1.0)",
            "low and high go together",
        ),
        (
            "Basic(terms: [(branches: [()])], low: 1.0, high: 0.0)",
            "low",
        ),
    ] {
        let text = format!("(name: \"t\", rules: [(select: Op(Dense), rule: {rule})])");
        let graph = import_onnx(&fixture("mlp.onnx")).unwrap().graph;
        let msg = match RuleConfig::parse(&text, "bad.ron", &reg) {
            Err(e) => e.to_string(),
            Ok(c) => {
                let (canonical, _) = lrp_engine::canonicalize(graph, &c).unwrap();
                c.assign(&canonical, &reg).expect_err(rule).to_string()
            }
        };
        assert!(
            msg.contains(needle) && msg.contains("Basic"),
            "{rule}: {msg}"
        );
    }
}
