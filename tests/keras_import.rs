//! Keras fixtures (`.keras`, Keras 3 `.h5`, tf_keras 2 `.h5`): imported, run, and compared with
//! Keras' own output to 1e-4 relative; bad files give errors naming the file and the culprit.

mod common;

use std::path::PathBuf;

use common::*;
use lrp_import::import_keras;
use lrp_ir::{Graph, Layout};
use lrp_runtime::{Device, ExportOutputs, Forward};

fn keras_fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/keras").join(name)
}

const MODELS: &[&str] = &[
    "seq_cnn",
    "resnet_block",
    "concat_depthwise",
    "vgg16_small",
    "misc_layers",
    "rescaling",
    "reshape_permute",
    "nested",
    "norm_crop_elu",
    "relu_variants",
];
const FLAVOURS: &[&str] = &["keras", "k3.h5", "k2.h5"];

fn run(graph: &Graph, name: &str) -> (f32, f32) {
    let x = read_npy(&keras_fixture(&format!("{name}.input.npy")));
    let expected = read_npy(&keras_fixture(&format!("{name}.expected.npy")));
    let mut fwd = Forward::new(graph, Device::Cpu, ExportOutputs::All, Some(1)).unwrap();
    let acts = fwd.run(x.view()).unwrap();
    let y = acts.get(graph.output_id()).unwrap();
    max_diff(y, &expected)
}

#[test]
fn fixtures_match_keras() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for name in MODELS {
        for flavour in FLAVOURS {
            let file = keras_fixture(&format!("{name}.{flavour}"));
            if !file.exists() {
                continue;
            }
            let imported = import_keras(&file).unwrap_or_else(|e| panic!("{name}.{flavour}: {e}"));
            let graph = imported.graph;
            assert_eq!(graph.input().layout, Layout::NHWC, "{name}.{flavour}");
            let (d, s) = run(&graph, name);
            eprintln!("{name}.{flavour}: max |Δ| = {d:.3e}, max |y| = {s:.3e}");
            assert!(
                d <= 1e-4 * s,
                "{name}.{flavour}: max |Δ| = {d}, max |y| = {s}"
            );
            // Saved and reloaded, the graph gives the same output.
            let path = dir
                .path()
                .join(format!("{name}_{}.ron", flavour.replace('.', "_")));
            let mut g = graph;
            g.save(&path).unwrap();
            let back = Graph::load(&path).unwrap();
            let (d2, _) = run(&back, name);
            assert!(d2 <= 1e-4 * s, "{name}.{flavour} after reload: {d2}");
            checked += 1;
        }
    }
    assert_eq!(checked, MODELS.len() * FLAVOURS.len());
}

#[test]
fn softmax_stays_a_softmax_node() {
    let g = import_keras(&keras_fixture("seq_cnn.keras")).unwrap().graph;
    let out = &g.nodes()[g.output_id()];
    assert_eq!(out.op, lrp_ir::Op::Softmax { axis: 1 });
    let first = &g.nodes()[g.topo_order()[0]];
    assert_eq!(
        first.op,
        lrp_ir::Op::Transpose {
            perm: vec![0, 3, 1, 2]
        }
    );
}

#[test]
fn tf_same_padding_puts_the_extra_at_the_end() {
    let g = import_keras(&keras_fixture("concat_depthwise.keras"))
        .unwrap()
        .graph;
    match &g.nodes()[g.node_id("down").unwrap()].op {
        lrp_ir::Op::Conv { pads, .. } => assert_eq!(*pads, [0, 0, 1, 1]),
        other => panic!("{other:?}"),
    }
    // ZeroPadding2D(((1, 0), (0, 2))) pads H by 1 before and W by 2 after.
    assert_eq!(
        g.nodes()[g.node_id("zpad").unwrap()].op,
        lrp_ir::Op::Pad {
            pads: vec![0, 0, 1, 0, 0, 0, 0, 2]
        }
    );
    for flavour in FLAVOURS {
        let g = import_keras(&keras_fixture(&format!("resnet_block.{flavour}")))
            .unwrap()
            .graph;
        match &g.nodes()[g.node_id("b2_conv1").unwrap()].op {
            lrp_ir::Op::Conv { pads, strides, .. } => {
                assert_eq!((*pads, *strides), ([0, 0, 1, 1], [2, 2]), "{flavour}")
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn new_layers_map_to_ir_ops() {
    for flavour in FLAVOURS {
        let g = import_keras(&keras_fixture(&format!("misc_layers.{flavour}")))
            .unwrap()
            .graph;
        let node = |n: &str| node(&g, n, flavour);
        // SeparableConv2D: depthwise (no bias) then pointwise 1×1 (with the bias).
        let dw = node("sep_depthwise");
        match &dw.op {
            lrp_ir::Op::Conv {
                groups,
                kernel,
                pads,
                ..
            } => assert_eq!((*groups, *kernel, *pads), (3, [3, 3], [1, 1, 1, 1])),
            other => panic!("{other:?}"),
        }
        assert!(!dw.params.contains_key("bias"), "{flavour}");
        let pw = node("sep");
        match &pw.op {
            lrp_ir::Op::Conv { groups, kernel, .. } => assert_eq!((*groups, *kernel), (1, [1, 1])),
            other => panic!("{other:?}"),
        }
        assert!(pw.params.contains_key("bias"), "{flavour}");
        assert_eq!(pw.inputs, ["sep_depthwise"]);
        match node("leaky").op {
            lrp_ir::Op::LeakyRelu { alpha } => assert!((alpha - 0.2).abs() < 1e-6, "{flavour}"),
            ref other => panic!("{other:?}"),
        }
        assert_eq!(node("sdrop").op, lrp_ir::Op::Dropout);
        // Permute((2, 1, 3)) swaps H and W: on NCHW that is axes 2 and 3.
        assert_eq!(
            node("permute").op,
            lrp_ir::Op::Transpose {
                perm: vec![0, 1, 3, 2]
            }
        );
        // Reshape((-1,)) of a 4-D tensor goes through NHWC first.
        assert_eq!(
            node("reshape_nhwc").op,
            lrp_ir::Op::Transpose {
                perm: vec![0, 2, 3, 1]
            }
        );
        assert_eq!(node("reshape").op, lrp_ir::Op::Reshape { shape: vec![200] });
        // Rescaling layers leave no node behind: they are folded into the next Conv2D/Dense.
        let g = import_keras(&keras_fixture(&format!("rescaling.{flavour}")))
            .unwrap()
            .graph;
        for n in ["rescale_in", "half", "affine"] {
            assert!(g.node_id(n).is_none(), "{flavour}: {n} is a node");
        }
        assert_eq!(g.nodes()[g.node_id("logits").unwrap()].inputs, ["flatten"]);
    }
}

/// Node `name` of `g`; a missing node fails the test naming the fixture flavour.
fn node<'a>(g: &'a lrp_ir::Graph, name: &str, flavour: &str) -> &'a lrp_ir::NodeDef {
    &g.nodes()[g
        .node_id(name)
        .unwrap_or_else(|| panic!("{flavour}: {name}"))]
}

#[test]
fn crop_elu_normalization_and_nested_models_map_to_ir_ops() {
    use lrp_ir::Op;
    for flavour in FLAVOURS {
        let g = import_keras(&keras_fixture(&format!("norm_crop_elu.{flavour}")))
            .unwrap()
            .graph;
        let op = |n: &str| node(&g, n, flavour).op.clone();
        // Before a 'same' convolution the normalisation cannot fold: an affine BatchNorm.
        assert_eq!(op("norm"), Op::BatchNorm { epsilon: 0.0 }, "{flavour}");
        assert_eq!(op("conv1_elu"), Op::Elu { alpha: 1.0 });
        assert_eq!(
            op("crop"),
            Op::Crop {
                crops: vec![0, 0, 1, 0, 0, 0, 2, 1]
            }
        );
        assert_eq!(op("elu"), Op::Elu { alpha: 0.5 });
        assert!(matches!(op("conv2_selu"), Op::Selu { .. }));
        // Before a 'valid' convolution the Rescaling folds into it.
        assert!(g.node_id("rescale").is_none(), "{flavour}");
        assert_eq!(g.nodes()[g.node_id("conv2").unwrap()].inputs, ["elu"]);
        // The adapted Normalization (weights, not config) before a MaxPool.
        assert_eq!(op("norm2"), Op::BatchNorm { epsilon: 0.0 });

        let g = import_keras(&keras_fixture(&format!("relu_variants.{flavour}")))
            .unwrap()
            .graph;
        let op = |n: &str| node(&g, n, flavour).op.clone();
        assert_eq!(op("thresholded"), Op::ThresholdedRelu { alpha: 0.3 });
        assert_eq!(op("leaky_capped_leakyrelu"), Op::LeakyRelu { alpha: 0.1 });
        assert_eq!(
            op("leaky_capped"),
            Op::Clip {
                min: f32::NEG_INFINITY,
                max: 2.0
            }
        );
        assert_eq!(
            op("thresholded_capped_thresholdedrelu"),
            Op::ThresholdedRelu { alpha: 0.2 }
        );
        assert_eq!(op("thresholded_capped"), Op::Clip { min: 0.0, max: 1.5 });

        let g = import_keras(&keras_fixture(&format!("nested.{flavour}")))
            .unwrap()
            .graph;
        let names: Vec<&str> = g.nodes().iter().map(|n| n.name.as_str()).collect();
        for n in [
            "base/conv1",
            "base/block/conv_a",
            "base/block/bn",
            "base/add",
            "head",
        ] {
            assert!(names.contains(&n), "{flavour}: no {n} in {names:?}");
        }
        let add = &g.nodes()[g.node_id("base/add").unwrap()];
        assert_eq!(add.inputs, ["base/conv1_relu", "base/block/relu"]);
    }
}

fn import_err(file: &str) -> String {
    match import_keras(&keras_fixture(file)) {
        Ok(_) => panic!("{file}: imported, expected an error"),
        Err(e) => e.to_string(),
    }
}

fn assert_err(file: &str, needles: &[&str]) {
    let e = import_err(file);
    assert!(
        e.contains(file),
        "{file}: the error does not name the file: {e}"
    );
    for n in needles {
        assert!(e.contains(n), "{file}: '{n}' not in: {e}");
    }
}

#[test]
fn bad_files_give_clear_errors() {
    assert_err("bad/weights_only.k2.h5", &["weights only", "model.save"]);
    assert_err("bad/weights_only.h5", &["weights only", "model.save"]);
    assert_err("bad/lambda.k2.h5", &["double", "Lambda"]);
    assert_err("bad/lambda.keras", &["Lambda"]);
    assert_err("bad/custom_layer.keras", &["unsupported layer class"]);
    assert_err("bad/subclassed.keras", &["subclassed"]);
    assert_err("bad/truncated.keras", &["zip"]);
    assert_err("bad/not_zip.keras", &["zip"]);
    assert_err("bad/truncated.h5", &["HDF5"]);
    for f in [
        "bad/mismatched.h5",
        "bad/mismatched.k2.h5",
        "bad/mismatched.keras",
    ] {
        assert_err(f, &["conv2", "Conv2D", "[3, 3, 8, 15]"]);
    }
}

#[test]
fn cli_converts_keras_files() {
    let dir = tempfile::tempdir().unwrap();
    for file in [
        "seq_cnn.keras",
        "resnet_block.k3.h5",
        "concat_depthwise.k2.h5",
    ] {
        let out = dir.path().join(format!("{}.ron", file.replace('.', "_")));
        let o = lrp(&[
            "convert",
            keras_fixture(file).to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{file}: {}", stderr(&o));
        assert!(!stderr(&o).contains("warning"), "{file}: {}", stderr(&o));
        let graph = Graph::load(&out).unwrap();
        let name = file.split('.').next().unwrap();
        let (d, s) = run(&graph, name);
        assert!(d <= 1e-4 * s, "{file}: max |Δ| = {d}, max |y| = {s}");
    }
    let o = lrp(&[
        "convert",
        keras_fixture("bad/lambda.keras").to_str().unwrap(),
        "-o",
        dir.path().join("x.ron").to_str().unwrap(),
    ]);
    assert_fails(&o, 2, &["lambda.keras", "Lambda"]);
}

/// The docs/keras.md walk-through (VGG16 → convert with caffe preprocessing and labels →
/// explain with SGLRP and the caffe input range), on the small VGG16-shaped stand-in, since the
/// real ImageNet weights cannot be downloaded here.
#[test]
fn cli_vgg16_walkthrough_on_the_small_stand_in() {
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels.txt");
    let names: Vec<String> = (0..10).map(|i| format!("class {i}")).collect();
    std::fs::write(&labels, names.join("\n") + "\n").unwrap();
    let ron = dir.path().join("vgg16.ron");
    let o = lrp(&[
        "convert",
        keras_fixture("vgg16_small.k3.h5").to_str().unwrap(),
        "-o",
        ron.to_str().unwrap(),
        "--preprocess",
        "caffe",
        "--labels",
        labels.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let g = Graph::load(&ron).unwrap();
    assert_eq!(g.def().labels.as_ref().map(Vec::len), Some(10));
    let out = dir.path().join("out");
    let photo = root().join("graphs/mnist/examples/digit_3.png");
    let o = lrp(&[
        "explain",
        ron.to_str().unwrap(),
        "--input",
        photo.to_str().unwrap(),
        "--method",
        "sglrp",
        "--low",
        "-123.68",
        "--high",
        "151.061",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report = read_report(&out);
    assert_eq!(report["softmax_removed"], true);
    let r = read_npy(&out.join("relevance.npy"));
    assert_eq!(r.shape(), [1, 32, 32, 3]);
    assert!(r.iter().all(|v| v.is_finite()));
    assert!(out.join("digit_3.png").exists());
}

#[test]
fn keras_models_and_their_onnx_twins_explain_alike() {
    // NAME.twin.onnx: the same network rebuilt with onnx.helper in NCHW
    // (tests/fixtures/gen_keras_fixtures.py --twins). Every method gives the same relevance on
    // both imports, up to the layout.
    use lrp_engine::{ExplainOptions, Explainer};
    use lrp_rules::{Registry, presets};
    let reg = Registry::with_builtins();
    let mut worst = 0f32;
    let mut zero = 0;
    for name in ["seq_cnn", "resnet_block", "vgg16_small"] {
        let x_nhwc = read_npy(&keras_fixture(&format!("{name}.input.npy")));
        let x_nchw = x_nhwc
            .view()
            .permuted_axes(ndarray::IxDyn(&[0, 3, 1, 2]))
            .as_standard_layout()
            .into_owned();
        let twin = lrp_import::import_onnx(&keras_fixture(&format!("{name}.twin.onnx")))
            .unwrap()
            .graph;
        // The twin itself reproduces Keras' output.
        let expected = read_npy(&keras_fixture(&format!("{name}.expected.npy")));
        let mut fwd = Forward::new(&twin, Device::Cpu, ExportOutputs::Final, Some(1)).unwrap();
        let y = fwd
            .run(x_nchw.view())
            .unwrap()
            .take(twin.output_id())
            .unwrap();
        let (d, s) = max_diff(&y, &expected);
        assert!(d <= 1e-4 * s, "{name} twin: {d} vs {s}");
        for flavour in ["keras", "k2.h5"] {
            let kg = import_keras(&keras_fixture(&format!("{name}.{flavour}")))
                .unwrap()
                .graph;
            for method in presets::names() {
                let run = |g: &Graph, x: &ndarray::ArrayD<f32>| {
                    let config = presets::preset(method, &reg).unwrap();
                    let mut ex =
                        Explainer::new(g.clone(), config, &reg, Device::Cpu, Some(1)).unwrap();
                    ex.explain(x, &ExplainOptions::default()).unwrap()
                };
                let a = run(&kg, &x_nhwc);
                let b = run(&twin, &x_nchw);
                assert_eq!(a.targets, b.targets, "{name}.{flavour} {method}");
                let a = a
                    .relevance
                    .view()
                    .permuted_axes(ndarray::IxDyn(&[0, 3, 1, 2]))
                    .as_standard_layout()
                    .into_owned();
                let (d, s) = max_diff(&a, &b.relevance);
                if s == 0.0 {
                    eprintln!(
                        "{name}.{flavour} {method}: zero relevance, targets {:?}",
                        b.targets
                    );
                    zero += 1;
                    continue;
                }
                let rel = d / s;
                worst = worst.max(rel);
                assert!(
                    rel <= 1e-4,
                    "{name}.{flavour} {method}: max |Δ| = {d}, max |R| = {s}"
                );
            }
        }
    }
    eprintln!("worst relative difference Keras vs ONNX twin: {worst:.2e}");
    // resnet_block's logits are all negative, so the methods with a ReLU on the logits
    // (head_relu: lrp, clrp, sglrp) explain nothing there, on either import.
    assert!(zero <= 6, "{zero} all-zero relevance maps");
}
