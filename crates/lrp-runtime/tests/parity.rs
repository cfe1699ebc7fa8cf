//! Converted graphs run on ONNX Runtime give the original model's outputs.

use lrp_import::import_onnx_model;
use lrp_runtime::{Device, ExportOutputs, Forward, run_onnx_bytes};
use lrp_testkit::{ResNetConfig, VggConfig, random_normal};
use ndarray::{ArrayD, IxDyn};

fn check(model: &lrp_onnx::ModelProto, hw: usize, batch: usize) {
    let imported = import_onnx_model(model, "mem.onnx".as_ref(), "m").expect("import");
    let graph = imported.graph;
    let x = ArrayD::from_shape_vec(
        IxDyn(&[batch, 3, hw, hw]),
        random_normal(7, batch * 3 * hw * hw, 1.0),
    )
    .unwrap();
    let reference =
        run_onnx_bytes(&lrp_onnx::encode_model(model), x.view()).expect("reference run");
    let mut fwd = Forward::new(&graph, Device::Cpu, ExportOutputs::All, Some(1)).expect("session");
    assert!(fwd.shares_weights(), "the weights were copied");
    let acts = fwd.run(x.view()).expect("run");
    let out = acts.get(graph.output_id()).expect("output");
    let scale = reference[0].iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = (out - &reference[0])
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()));
    assert!(diff <= 1e-5 * scale, "max |Δ| = {diff}, max |y| = {scale}");
    for &id in graph.topo_order() {
        let a = acts.get(id).expect("every node's activation");
        assert_eq!(
            &a.shape()[1..],
            graph.shape(id),
            "node {}",
            graph.nodes()[id].name
        );
    }
}

#[test]
fn vgg16_shaped() {
    check(
        &VggConfig::new(10, 32, 1)
            .width_div(8)
            .classifier_width(64)
            .build(),
        32,
        2,
    );
}

#[test]
fn resnet18_shaped() {
    check(&ResNetConfig::new(10, 32, 2).width_div(8).build(), 32, 3);
}

/// A small VGG-shaped graph (32×32 inputs, seeded weights), imported in memory.
fn small_vgg(seed: u64) -> lrp_ir::Graph {
    let model = VggConfig::new(10, 32, seed)
        .width_div(8)
        .classifier_width(64)
        .build();
    import_onnx_model(&model, "mem.onnx".as_ref(), "m")
        .expect("import")
        .graph
}

/// Two seeded 3×32×32 inputs.
fn two_images(seed: u64) -> ArrayD<f32> {
    ArrayD::from_shape_vec(
        IxDyn(&[2, 3, 32, 32]),
        random_normal(seed, 2 * 3 * 32 * 32, 1.0),
    )
    .unwrap()
}

#[test]
fn the_session_keeps_the_weights_it_shares() {
    let graph = small_vgg(3);
    let x = two_images(9);
    let mut fwd = Forward::new(&graph, Device::Cpu, ExportOutputs::Final, Some(1)).unwrap();
    assert!(fwd.shares_weights());
    let out = graph.output_id();
    let want = fwd.run(x.view()).unwrap().get(out).unwrap().clone();
    drop(graph);
    // Freed memory would be handed out again here.
    let other: Vec<Vec<f32>> = (0..64).map(|i| vec![i as f32; 1 << 14]).collect();
    let got = fwd.run(x.view()).unwrap().get(out).unwrap().clone();
    assert_eq!(got, want);
    drop(other);
}

#[test]
fn a_loaded_graph_is_run_from_its_mapped_weights_file() {
    let mut graph = small_vgg(5);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.ron");
    graph.save(&path).unwrap();
    let loaded = lrp_ir::Graph::load(&path).unwrap();
    assert!(
        loaded
            .weights()
            .iter()
            .all(|(k, _)| loaded.weights().shared(k).unwrap().is_mapped()),
        "every f32 weight is read in place"
    );
    let x = two_images(11);
    let run = |g: &lrp_ir::Graph| {
        let mut fwd = Forward::new(g, Device::Cpu, ExportOutputs::Final, Some(1)).unwrap();
        assert!(fwd.shares_weights());
        let y = fwd
            .run(x.view())
            .unwrap()
            .get(g.output_id())
            .unwrap()
            .clone();
        (fwd, y)
    };
    let (_, want) = run(&graph);
    let (mut fwd, got) = run(&loaded);
    assert_eq!(got, want);
    // The session keeps the map alive after the graph is gone.
    let out = loaded.output_id();
    drop(loaded);
    let again = fwd.run(x.view()).unwrap().get(out).unwrap().clone();
    assert_eq!(again, want);
}
