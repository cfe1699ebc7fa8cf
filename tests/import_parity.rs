//! Every ONNX fixture: converted, saved, reloaded and run, reproduces ONNX Runtime's output on
//! the original model to 1e-5 relative; RON round-trips byte for byte.

mod common;

use common::*;
use lrp_import::import_onnx;
use lrp_ir::{Graph, parse_ron, to_ron};
use lrp_runtime::{Device, ExportOutputs, Forward};

#[test]
fn fixtures_match_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    for name in FIXTURES {
        let imported = import_onnx(&fixture(&format!("{name}.onnx")))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut graph = imported.graph;
        let path = dir.path().join(format!("{name}.ron"));
        graph.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            to_ron(&parse_ron(&text, &path).unwrap()),
            text,
            "{name}: RON round trip"
        );
        let graph = Graph::load(&path).unwrap();
        let x = read_npy(&fixture(&format!("{name}.input.npy")));
        let expected = read_npy(&fixture(&format!("{name}.expected.npy")));
        let mut fwd = Forward::new(&graph, Device::Cpu, ExportOutputs::All, Some(1)).unwrap();
        let acts = fwd.run(x.view()).unwrap();
        let y = acts.get(graph.output_id()).unwrap();
        let (d, s) = max_diff(y, &expected);
        assert!(d <= 1e-5 * s, "{name}: max |Δ| = {d}, max |y| = {s}");
        for &id in graph.topo_order() {
            let a = acts.get(id).unwrap();
            assert_eq!(
                &a.shape()[1..],
                graph.shape(id),
                "{name}: node {}",
                graph.nodes()[id].name
            );
        }
    }
}

#[test]
fn fixture_graphs_keep_their_structure() {
    // Things the importer must get right beyond the numbers.
    let g = import_onnx(&fixture("mlp.onnx")).unwrap().graph;
    let ops: Vec<&str> = g
        .topo_order()
        .iter()
        .map(|&i| g.nodes()[i].op.kind())
        .collect();
    assert_eq!(
        ops.first(),
        Some(&"Dense"),
        "MatMul + Add fold into one Dense: {ops:?}"
    );
    assert!(!ops.contains(&"Add"), "{ops:?}");
    assert_eq!(g.nodes()[g.output_id()].op.kind(), "Softmax");
    let first = &g.nodes()[g.topo_order()[0]];
    assert!(
        first.params.contains_key("bias"),
        "the Add's constant is the Dense bias"
    );

    let g = import_onnx(&fixture("resnet_block.onnx")).unwrap().graph;
    let count = |k: &str| g.nodes().iter().filter(|n| n.op.kind() == k).count();
    assert_eq!((count("BatchNorm"), count("Add"), count("Conv")), (6, 2, 6));

    let g = import_onnx(&fixture("conv_variety.onnx")).unwrap().graph;
    let pads_of = |name: &str| match &g.nodes()[g.node_id(name).unwrap()].op {
        lrp_ir::Op::Conv { pads, .. } => *pads,
        other => panic!("{other:?}"),
    };
    // SAME_UPPER puts the extra padding at the end, SAME_LOWER at the beginning.
    assert_eq!(pads_of("conv_same_upper"), [1, 1, 2, 2]);
    assert_eq!(pads_of("conv_same_lower"), [1, 1, 1, 0]);
    assert_eq!(pads_of("conv_asym_pads"), [0, 1, 2, 1]);
}

#[test]
fn large_models_from_the_testkit() {
    use lrp_testkit::{ResNetConfig, VggConfig, random_normal, temp_model};
    let cases = [
        ("vgg16", VggConfig::new(1000, 224, 3).build()),
        ("resnet18", ResNetConfig::new(1000, 224, 4).build()),
    ];
    for (name, model) in cases {
        let (_dir, path) = temp_model(&model);
        let graph = import_onnx(&path).unwrap().graph;
        let x = ndarray::ArrayD::from_shape_vec(
            ndarray::IxDyn(&[1, 3, 224, 224]),
            random_normal(11, 3 * 224 * 224, 1.0),
        )
        .unwrap();
        let reference =
            lrp_runtime::run_onnx_bytes(&std::fs::read(&path).unwrap(), x.view()).unwrap();
        let mut fwd = Forward::new(&graph, Device::Cpu, ExportOutputs::Final, None).unwrap();
        let y = fwd.run(x.view()).unwrap().take(graph.output_id()).unwrap();
        let (d, s) = max_diff(&y, &reference[0]);
        assert!(d <= 1e-5 * s, "{name}: max |Δ| = {d}, max |y| = {s}");
    }
}

#[test]
fn slice_elu_selu_thresholded_relu_match_onnx_runtime() {
    use lrp_testkit::{Attr, OnnxBuilder, random_normal, temp_model};
    for opset in [9, 13] {
        let mut b = OnnxBuilder::new("slice_elu", opset);
        b.input("x", &[None, Some(3), Some(10), Some(12)]);
        let c = b.conv("x", 3, 4, 3, 1, 1, 1, true);
        b.named("elu").node(
            "Elu",
            &[c.as_str()],
            &["elu"],
            vec![Attr::float("alpha", 0.7)],
        );
        if opset < 10 {
            b.named("crop").node(
                "Slice",
                &["elu"],
                &["crop"],
                vec![
                    Attr::ints("starts", &[1, 2]),
                    Attr::ints("ends", &[-1, 100]),
                    Attr::ints("axes", &[2, 3]),
                ],
            );
        } else {
            b.initializer_i64("starts", &[2], vec![1, 2]);
            b.initializer_i64("ends", &[2], vec![-1, i64::MAX]);
            b.initializer_i64("axes", &[2], vec![-2, 3]);
            b.initializer_i64("steps", &[2], vec![1, 1]);
            b.named("crop").node(
                "Slice",
                &["elu", "starts", "ends", "axes", "steps"],
                &["crop"],
                vec![],
            );
        }
        b.named("selu").node("Selu", &["crop"], &["selu"], vec![]);
        let out = if opset >= 10 {
            b.named("thr").node(
                "ThresholdedRelu",
                &["selu"],
                &["thr"],
                vec![Attr::float("alpha", 0.2)],
            );
            "thr"
        } else {
            "selu"
        };
        b.output(out);
        let model = b.build();
        let (_dir, path) = temp_model(&model);
        let graph = import_onnx(&path)
            .unwrap_or_else(|e| panic!("opset {opset}: {e}"))
            .graph;
        let id = graph.node_id("crop").unwrap();
        assert_eq!(
            graph.nodes()[id].op,
            lrp_ir::Op::Crop {
                crops: vec![0, 0, 1, 2, 0, 0, 1, 0]
            },
            "opset {opset}"
        );
        assert_eq!(graph.shape(id), &[4, 8, 10]);
        let x = ndarray::ArrayD::from_shape_vec(
            ndarray::IxDyn(&[2, 3, 10, 12]),
            random_normal(5, 2 * 3 * 10 * 12, 1.0),
        )
        .unwrap();
        let reference =
            lrp_runtime::run_onnx_bytes(&std::fs::read(&path).unwrap(), x.view()).unwrap();
        let mut fwd = Forward::new(&graph, Device::Cpu, ExportOutputs::Final, Some(1)).unwrap();
        let y = fwd.run(x.view()).unwrap().take(graph.output_id()).unwrap();
        let (d, s) = max_diff(&y, &reference[0]);
        assert!(d <= 1e-5 * s, "opset {opset}: max |Δ| = {d}, max |y| = {s}");
    }
    // Steps other than 1 and empty slices are refused with the node named.
    let mut b = OnnxBuilder::new("bad_slice", 13);
    b.input("x", &[None, Some(3), Some(4), Some(4)]);
    b.initializer_i64("starts", &[1], vec![0]);
    b.initializer_i64("ends", &[1], vec![4]);
    b.initializer_i64("axes", &[1], vec![2]);
    b.initializer_i64("steps", &[1], vec![2]);
    b.named("strided").node(
        "Slice",
        &["x", "starts", "ends", "axes", "steps"],
        &["y"],
        vec![],
    );
    b.output("y");
    let (_dir, path) = temp_model(&b.build());
    let e = import_onnx(&path).unwrap_err().to_string();
    assert!(e.contains("strided") && e.contains("steps"), "{e}");
}
