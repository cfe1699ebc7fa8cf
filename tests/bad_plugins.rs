//! A rule plugin that fails, returns the wrong number of arrays or the wrong shape, produces
//! NaN or panics is reported with the node's and the rule's names; the explainer stays usable.

mod common;

use std::sync::Arc;

use common::*;
use lrp_engine::{ExplainError, ExplainOptions, Explainer};
use lrp_import::import_onnx;
use lrp_rules::{NodeContext, Registry, Rule, RuleConfig};
use lrp_runtime::Device;
use ndarray::{ArrayD, ArrayViewD, IxDyn};

#[derive(Debug)]
enum Bad {
    Fails,
    TwoArrays,
    WrongShape,
    MakesNan,
    Panics,
}

impl Rule for Bad {
    fn relevance(
        &self,
        ctx: &NodeContext<'_>,
        r_out: ArrayViewD<'_, f32>,
    ) -> Result<Vec<ArrayD<f32>>, String> {
        let mut shape = vec![r_out.shape()[0]];
        shape.extend_from_slice(&ctx.inputs[0].shape()[1..]);
        let good = ArrayD::<f32>::zeros(IxDyn(&shape));
        match self {
            Bad::Fails => Err("the weights are not what I expected".into()),
            Bad::TwoArrays => Ok(vec![good.clone(), good]),
            Bad::WrongShape => Ok(vec![ArrayD::zeros(IxDyn(&[1, 2, 3]))]),
            Bad::MakesNan => Ok(vec![good.mapv(|_| f32::NAN)]),
            Bad::Panics => {
                let v: Vec<f32> = Vec::new();
                Ok(vec![good.mapv(|_| v[3])])
            }
        }
    }

    fn describe(&self) -> String {
        format!("Bad{self:?}")
    }
}

fn registry() -> Registry {
    let mut r = Registry::with_builtins();
    for (name, bad) in [
        ("Fails", 0),
        ("TwoArrays", 1),
        ("WrongShape", 2),
        ("MakesNan", 3),
        ("Panics", 4),
    ] {
        r.register(name, "a broken rule", vec![], move |_, _| {
            Ok(Arc::new(match bad {
                0 => Bad::Fails,
                1 => Bad::TwoArrays,
                2 => Bad::WrongShape,
                3 => Bad::MakesNan,
                _ => Bad::Panics,
            }))
        })
        .unwrap();
    }
    r
}

#[test]
fn broken_rules_are_reported_with_node_and_rule() {
    let reg = registry();
    let graph = import_onnx(&fixture("mlp.onnx")).unwrap().graph;
    let x = read_npy(&fixture("mlp.input.npy"));
    for (rule, needle) in [
        ("Fails", "the weights are not what I expected"),
        ("TwoArrays", "returned 2 relevance arrays for 1 inputs"),
        ("WrongShape", "returned shape [1, 2, 3] for input 0"),
        ("MakesNan", "produced NaN in the relevance of input 0"),
        ("Panics", "the rule panicked: index out of bounds"),
    ] {
        let text = format!(
            "(name: \"t\", rules: [(select: Name(\"fc3_gemm\"), rule: {rule}), (select: Op(Dense), rule: Epsilon)])"
        );
        let config = RuleConfig::parse(&text, "t.ron", &reg).unwrap();
        let mut ex = Explainer::new(graph.clone(), config, &reg, Device::Cpu, Some(1)).unwrap();
        let err = ex.explain(&x, &ExplainOptions::default()).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(&err, ExplainError::Rule { node, rule: r, .. } if node == "fc3_gemm" && r == &format!("Bad{rule}")),
            "{rule}: {msg}"
        );
        assert!(
            msg.contains("node 'fc3_gemm' (Dense)") && msg.contains(needle),
            "{rule}: {msg}"
        );
        // The explainer is still usable after the failure.
        assert!(ex.explain(&x, &ExplainOptions::default()).is_err());
    }
}
