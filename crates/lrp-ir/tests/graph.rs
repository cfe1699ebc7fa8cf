//! Graph validation, RON round trips and error messages.

use std::collections::BTreeMap;

use lrp_ir::{
    Graph, GraphDef, InputDef, IrError, Layout, NodeDef, Op, Preprocess, Weights, parse_ron, to_ron,
};
use ndarray::{ArrayD, IxDyn};

fn node(name: &str, op: Op, inputs: &[&str], params: &[(&str, &str)]) -> NodeDef {
    NodeDef {
        name: name.into(),
        op,
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn zeros(shape: &[usize]) -> ArrayD<f32> {
    ArrayD::from_elem(IxDyn(shape), 0.1)
}

fn small() -> (GraphDef, Weights) {
    let mut w = Weights::new();
    w.insert("conv.weight", zeros(&[4, 3, 3, 3]));
    w.insert("conv.bias", zeros(&[4]));
    w.insert("fc.weight", zeros(&[5, 64]));
    let def = GraphDef {
        format: 1,
        name: "small".into(),
        weights: "small.safetensors".into(),
        input: InputDef {
            name: "x".into(),
            shape: vec![3, 8, 8],
            layout: Layout::NCHW,
            preprocess: Some(Preprocess::torch()),
        },
        output: "fc".into(),
        nodes: vec![
            node(
                "conv",
                Op::Conv {
                    kernel: [3, 3],
                    strides: [1, 1],
                    pads: [1, 1, 1, 1],
                    dilations: [1, 1],
                    groups: 1,
                },
                &["x"],
                &[("weight", "conv.weight"), ("bias", "conv.bias")],
            ),
            node("relu", Op::Relu, &["conv"], &[]),
            node(
                "pool",
                Op::MaxPool {
                    kernel: [2, 2],
                    strides: [2, 2],
                    pads: [0; 4],
                    dilations: [1, 1],
                    ceil_mode: false,
                },
                &["relu"],
                &[],
            ),
            node("flat", Op::Flatten, &["pool"], &[]),
            node("fc", Op::Dense, &["flat"], &[("weight", "fc.weight")]),
        ],
        labels: Some((0..5).map(|i| format!("class {i}")).collect()),
    };
    (def, w)
}

fn invalid(def: GraphDef, w: Weights) -> String {
    match Graph::new(def, w) {
        Err(e @ IrError::Invalid { .. }) => e.to_string(),
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[test]
fn shapes_and_order() {
    let (def, w) = small();
    let g = Graph::new(def, w).unwrap();
    assert_eq!(g.shape(g.output_id()), &[5]);
    assert_eq!(g.tensor_shape("pool").unwrap(), &[4, 4, 4]);
    let names: Vec<&str> = g
        .topo_order()
        .iter()
        .map(|&i| g.nodes()[i].name.as_str())
        .collect();
    assert_eq!(names, ["conv", "relu", "pool", "flat", "fc"]);
    assert_eq!(g.consumers(g.node_id("conv").unwrap()), vec![(1, 0)]);
}

#[test]
fn ron_round_trip_is_byte_exact_and_readable() {
    let (def, _) = small();
    let text = to_ron(&def);
    let back = parse_ron(&text, "x.ron".as_ref()).unwrap();
    assert_eq!(back, def);
    assert_eq!(to_ron(&back), text);
    insta::assert_snapshot!(text);
}

#[test]
fn save_and_load() {
    let (def, w) = small();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.ron");
    let mut g = Graph::new(def, w).unwrap();
    g.save(&path).unwrap();
    let first = std::fs::read(&path).unwrap();
    let mut h = Graph::load(&path).unwrap();
    assert_eq!(h.def(), g.def());
    assert_eq!(h.weights(), g.weights());
    h.save(&path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), first);
}

#[test]
fn rejects_cycles_dangling_duplicates_and_bad_weights() {
    let (mut def, w) = small();
    def.nodes[0].inputs = vec!["relu".into()];
    let e = invalid(def, w);
    assert!(e.contains("cycle"), "{e}");

    let (mut def, w) = small();
    def.nodes[1].inputs = vec!["nope".into()];
    let e = invalid(def, w);
    assert!(
        e.contains("node 'relu' (Relu)") && e.contains("'nope'"),
        "{e}"
    );

    let (mut def, w) = small();
    def.nodes[2].name = "relu".into();
    assert!(invalid(def, w).contains("duplicate node name"));

    let (def, mut w) = small();
    w.insert("fc.weight", zeros(&[5, 63]));
    let e = invalid(def, w);
    assert!(
        e.contains("node 'fc' (Dense)") && e.contains("[5, 63]"),
        "{e}"
    );

    let (def, mut w) = small();
    w.remove("conv.bias");
    let e = invalid(def, w);
    assert!(
        e.contains("node 'conv' (Conv)") && e.contains("conv.bias"),
        "{e}"
    );

    let (mut def, w) = small();
    def.nodes[4].params.clear();
    assert!(invalid(def, w).contains("missing parameter 'weight'"));

    let (mut def, w) = small();
    def.nodes[1]
        .params
        .insert("weight".into(), "fc.weight".into());
    assert!(invalid(def, w).contains("unknown parameter 'weight'"));

    let (mut def, w) = small();
    def.labels = Some(vec!["a".into()]);
    assert!(invalid(def, w).contains("1 labels"));

    let (mut def, w) = small();
    def.format = 7;
    assert!(invalid(def, w).contains("format 7"));
}

#[test]
fn parse_errors_have_line_and_column() {
    let (def, _) = small();
    let text = to_ron(&def).replace("kernel: (3, 3)", "kernel: (3, 3), frobnicate: 1");
    match parse_ron(&text, "g.ron".as_ref()) {
        Err(e @ IrError::Parse { .. }) => {
            let s = e.to_string();
            assert!(s.starts_with("g.ron:") && s.contains("frobnicate"), "{s}");
        }
        other => panic!("{other:?}"),
    }
}
