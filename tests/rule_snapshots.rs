//! The rule assignment of every preset on the fixture networks, as `inspect --method` prints
//! it: a change of a preset, a rule's parameters or the selectors shows up here.

mod common;

use common::*;
use lrp_engine::canonicalize;
use lrp_import::import_onnx;
use lrp_rules::{Registry, presets};

#[test]
fn preset_assignments() {
    let reg = Registry::with_builtins();
    for model in ["vgg_small", "resnet_block", "mlp"] {
        let graph = import_onnx(&fixture(&format!("{model}.onnx")))
            .unwrap()
            .graph;
        for method in presets::names() {
            let config = presets::preset(method, &reg).unwrap();
            let (canonical, _) = canonicalize(graph.clone(), &config).unwrap();
            let text = config
                .assign(&canonical, &reg)
                .unwrap()
                .describe(&canonical);
            insta::assert_snapshot!(format!("{model}__{method}"), text);
        }
    }
}
