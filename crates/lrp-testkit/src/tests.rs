use super::*;
use lrp_onnx::proto::{TensorProto, tensor_shape_proto::dimension::Value as Dim, type_proto};
use lrp_onnx::{attr_type, decode_model, dtype, encode_model};

fn graph(m: &ModelProto) -> &lrp_onnx::GraphProto {
    m.graph.as_ref().expect("graph")
}

fn count_ops(m: &ModelProto, op: &str) -> usize {
    graph(m)
        .node
        .iter()
        .filter(|n| n.op_type.as_deref() == Some(op))
        .count()
}

fn initializer_elements(m: &ModelProto) -> u64 {
    graph(m)
        .initializer
        .iter()
        .map(|t| t.dims.iter().product::<i64>() as u64)
        .sum()
}

fn f32_values(t: &TensorProto) -> Vec<f32> {
    match &t.raw_data {
        Some(raw) => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        None => t.float_data.clone(),
    }
}

fn initializer<'a>(m: &'a ModelProto, name: &str) -> &'a TensorProto {
    graph(m)
        .initializer
        .iter()
        .find(|t| t.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no initializer {name}"))
}

fn small_model() -> ModelProto {
    let mut b = OnnxBuilder::new("small", 17).with_seed(7);
    b.input("x", &[None, Some(3), Some(8), Some(8)]);
    let c = b.conv("x", 3, 4, 3, 1, 1, 1, true);
    let c = b.batchnorm(&c, 4);
    let r = b.relu(&c);
    let d = b.conv(&r, 4, 4, 3, 1, 1, 2, false);
    let s = b.add(&r, &d);
    let p = b.maxpool(&s, 2, 2, 0);
    let g = b.global_avg_pool(&p);
    let f = b.flatten(&g);
    let y = b.gemm(&f, 4, 5);
    b.initializer("scale", &[1], vec![2.0])
        .initializer_typed_f32("shift", &[1], vec![0.5])
        .initializer_i64("shape", &[2], vec![-1, 5])
        .initializer_typed_i64("shape_typed", &[2], vec![-1, 5])
        .node("Mul", &[y.as_str(), "scale"], &["scaled"], vec![])
        .node("Add", &["scaled", "shift"], &["shifted"], vec![])
        .node("Reshape", &["shifted", "shape"], &["y"], vec![])
        .node(
            "Constant",
            &[] as &[&str],
            &["c"],
            vec![Attr::tensor("value", tensor_f32("c", &[2], &[1.0, 2.0]))],
        )
        .output("y")
        .output_shaped("c", &[Some(2)]);
    b.build()
}

#[test]
fn builder_round_trips_through_encode_decode() {
    let m = small_model();
    let bytes = encode_model(&m);
    let back = decode_model(&bytes).expect("decode");
    assert_eq!(back, m);
    assert_eq!(encode_model(&back), bytes);
}

#[test]
fn builder_sets_model_header_and_io() {
    let m = small_model();
    assert_eq!(m.ir_version, Some(8));
    assert_eq!(m.opset_import.len(), 1);
    assert_eq!(m.opset_import[0].domain.as_deref(), Some(""));
    assert_eq!(m.opset_import[0].version, Some(17));
    let g = graph(&m);
    assert_eq!(g.name.as_deref(), Some("small"));
    assert_eq!(g.input.len(), 1);
    let Some(type_proto::Value::TensorType(t)) = &g.input[0].r#type.as_ref().unwrap().value else {
        panic!("tensor type");
    };
    assert_eq!(t.elem_type, Some(dtype::FLOAT));
    let dims: Vec<_> = t
        .shape
        .as_ref()
        .unwrap()
        .dim
        .iter()
        .map(|d| d.value.clone())
        .collect();
    assert_eq!(
        dims,
        vec![
            Some(Dim::DimParam("N".into())),
            Some(Dim::DimValue(3)),
            Some(Dim::DimValue(8)),
            Some(Dim::DimValue(8)),
        ]
    );
    let Some(type_proto::Value::TensorType(out)) = &g.output[0].r#type.as_ref().unwrap().value
    else {
        panic!("tensor type");
    };
    assert!(out.shape.is_none(), "output(\"y\") has unknown shape");
    assert_eq!(g.output[1].name.as_deref(), Some("c"));
}

#[test]
fn builder_initializer_encodings() {
    let m = small_model();
    let raw = initializer(&m, "scale");
    assert_eq!(raw.data_type, Some(dtype::FLOAT));
    assert_eq!(raw.raw_data.as_deref(), Some(&2.0f32.to_le_bytes()[..]));
    assert!(raw.float_data.is_empty());
    let typed = initializer(&m, "shift");
    assert_eq!(typed.raw_data, None);
    assert_eq!(typed.float_data, vec![0.5]);
    let i = initializer(&m, "shape");
    assert_eq!(i.data_type, Some(dtype::INT64));
    let mut expected = (-1i64).to_le_bytes().to_vec();
    expected.extend_from_slice(&5i64.to_le_bytes());
    assert_eq!(i.raw_data.as_deref(), Some(&expected[..]));
    let it = initializer(&m, "shape_typed");
    assert_eq!(it.int64_data, vec![-1, 5]);
    assert_eq!(it.raw_data, None);
}

#[test]
fn attr_helpers_set_type_and_value() {
    let a = Attr::int("axis", 1).into_proto();
    assert_eq!(
        (a.name.as_deref(), a.r#type, a.i),
        (Some("axis"), Some(attr_type::INT), Some(1))
    );
    let a = Attr::ints("pads", &[1, 1, 1, 1]).into_proto();
    assert_eq!(
        (a.r#type, a.ints),
        (Some(attr_type::INTS), vec![1, 1, 1, 1])
    );
    let a = Attr::float("alpha", 0.5).into_proto();
    assert_eq!((a.r#type, a.f), (Some(attr_type::FLOAT), Some(0.5)));
    let a = Attr::floats("scales", &[1.0, 2.0]).into_proto();
    assert_eq!(
        (a.r#type, a.floats),
        (Some(attr_type::FLOATS), vec![1.0, 2.0])
    );
    let a = Attr::string("mode", "nearest").into_proto();
    assert_eq!(
        (a.r#type, a.s),
        (Some(attr_type::STRING), Some(b"nearest".to_vec()))
    );
    let a = Attr::tensor("value", tensor_i64("v", &[1], &[3])).into_proto();
    assert_eq!(a.r#type, Some(attr_type::TENSOR));
    assert_eq!(a.t.unwrap().data_type, Some(dtype::INT64));
}

#[test]
fn layer_helpers_wire_nodes_and_weights() {
    let m = small_model();
    let g = graph(&m);
    let conv = &g.node[0];
    assert_eq!(conv.op_type.as_deref(), Some("Conv"));
    assert_eq!(conv.output, vec!["conv_0".to_owned()]);
    assert_eq!(conv.input, vec!["x", "conv_0.weight", "conv_0.bias"]);
    assert_eq!(initializer(&m, "conv_0.weight").dims, vec![4, 3, 3, 3]);
    let grouped = &g.node[3];
    assert_eq!(grouped.input, vec!["relu_0", "conv_1.weight"]);
    assert_eq!(initializer(&m, "conv_1.weight").dims, vec![4, 2, 3, 3]);
    let group = grouped
        .attribute
        .iter()
        .find(|a| a.name.as_deref() == Some("group"));
    assert_eq!(group.and_then(|a| a.i), Some(2));
    let bn = &g.node[1];
    assert_eq!(bn.op_type.as_deref(), Some("BatchNormalization"));
    assert_eq!(bn.input.len(), 5);
    let var = f32_values(initializer(&m, "bn_0.running_var"));
    assert!(var.iter().all(|&v| (0.75..1.5).contains(&v)));
    let gemm = g
        .node
        .iter()
        .find(|n| n.op_type.as_deref() == Some("Gemm"))
        .unwrap();
    assert_eq!(initializer(&m, "gemm_0.weight").dims, vec![5, 4]);
    let trans_b = gemm
        .attribute
        .iter()
        .find(|a| a.name.as_deref() == Some("transB"));
    assert_eq!(trans_b.and_then(|a| a.i), Some(1));
}

#[test]
fn he_init_has_the_right_scale() {
    let mut b = OnnxBuilder::new("he", 17).with_seed(1);
    b.input("x", &[None, Some(64), Some(8), Some(8)]);
    b.conv("x", 64, 256, 3, 1, 1, 1, false);
    let m = b.build();
    let w = f32_values(initializer(&m, "conv_0.weight"));
    let n = w.len() as f64;
    let mean = w.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = w
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    let expected: f64 = 2.0 / (64.0 * 9.0);
    assert!(mean.abs() < 0.01 * expected.sqrt(), "mean {mean}");
    assert!(
        (var / expected - 1.0).abs() < 0.02,
        "var {var} vs {expected}"
    );
}

#[test]
fn ir_version_follows_opset() {
    assert_eq!(ir_version_for_opset(13), 8);
    assert_eq!(ir_version_for_opset(17), 8);
    assert_eq!(ir_version_for_opset(18), 8);
    assert_eq!(ir_version_for_opset(19), 9);
    assert_eq!(ir_version_for_opset(20), 9);
    assert_eq!(ir_version_for_opset(21), 10);
    assert_eq!(OnnxBuilder::new("m", 21).build().ir_version, Some(10));
    assert_eq!(
        OnnxBuilder::new("m", 17).ir_version(9).build().ir_version,
        Some(9)
    );
}

#[test]
fn named_and_rename_value() {
    let mut b = OnnxBuilder::new("n", 17);
    b.input("x", &[Some(1), Some(4)]);
    let y = b.named("fc").gemm("x", 4, 2);
    assert_eq!(y, "fc");
    b.rename_value(&y, "logits").output("logits");
    let m = b.build();
    let g = graph(&m);
    assert_eq!(g.node[0].name.as_deref(), Some("fc"));
    assert_eq!(g.node[0].output, vec!["logits".to_owned()]);
    assert_eq!(g.node[0].input, vec!["x", "fc.weight", "fc.bias"]);
    // An automatic name never collides with a user-chosen one.
    let mut b = OnnxBuilder::new("n", 17);
    b.input("relu_0", &[Some(1)]);
    assert_eq!(b.relu("relu_0"), "relu_1");
}

#[test]
fn dry_run_counts_like_a_real_build() {
    let mut real = OnnxBuilder::new("a", 17);
    let mut dry = OnnxBuilder::dry_run("a", 17);
    for b in [&mut real, &mut dry] {
        b.input("x", &[None, Some(3), Some(8), Some(8)]);
        let c = b.conv("x", 3, 8, 3, 1, 1, 1, true);
        let c = b.batchnorm(&c, 8);
        let f = b.flatten(&c);
        b.gemm(&f, 512, 10);
        b.initializer_i64("s", &[2], vec![1, -1]);
    }
    assert!(dry.is_dry_run() && !real.is_dry_run());
    let m = real.build();
    assert!(graph(&dry.build()).initializer.is_empty());
    let count = real.param_count();
    assert_eq!(dry.param_count(), count);
    assert_eq!(count.total_elements(), initializer_elements(&m));
    assert_eq!(count.tensors, graph(&m).initializer.len() as u64);
    assert_eq!(count.trainable, 3 * 8 * 9 + 8 + 2 * 8 + 512 * 10 + 10);
    assert_eq!(count.buffers, 2 * 8);
    assert_eq!(count.constants, 2);
}

#[test]
fn vgg16_full_parameter_count() {
    let count = VggConfig::new(1000, 224, 0).param_count();
    assert_eq!(count.trainable, 138_357_544);
    assert_eq!(count.buffers, 0);
    assert_eq!(count.constants, 0);
    assert_eq!(count.tensors, 32);
    assert_eq!(VggConfig::new(1000, 224, 0).classifier_in(), 25088);
}

#[test]
fn vgg16_small_structure() {
    let cfg = VggConfig::new(10, 64, 3).width_div(16).classifier_width(64);
    assert_eq!(cfg.feature_hw(), 2);
    assert_eq!(cfg.classifier_in(), 32 * 2 * 2);
    let m = cfg.build();
    assert_eq!(count_ops(&m, "Conv"), 13);
    assert_eq!(count_ops(&m, "Relu"), 15);
    assert_eq!(count_ops(&m, "MaxPool"), 5);
    assert_eq!(count_ops(&m, "Gemm"), 3);
    assert_eq!(count_ops(&m, "Flatten"), 1);
    assert_eq!(m.opset_import[0].version, Some(MODEL_OPSET));
    let g = graph(&m);
    assert_eq!(g.input[0].name.as_deref(), Some(MODEL_INPUT));
    assert_eq!(g.output[0].name.as_deref(), Some(MODEL_OUTPUT));
    assert_eq!(g.node.last().unwrap().output, vec![MODEL_OUTPUT.to_owned()]);
    assert_eq!(initializer(&m, "features.0.weight").dims, vec![4, 3, 3, 3]);
    assert_eq!(
        initializer(&m, "features.28.weight").dims,
        vec![32, 32, 3, 3]
    );
    assert_eq!(initializer(&m, "classifier.0.weight").dims, vec![64, 128]);
    assert_eq!(initializer(&m, "classifier.6.weight").dims, vec![10, 64]);
    assert_eq!(cfg.param_count().total_elements(), initializer_elements(&m));
}

#[test]
fn resnet18_full_parameter_count() {
    let count = ResNetConfig::new(1000, 224, 0).param_count();
    assert_eq!(count.trainable, 11_689_512);
    assert_eq!(count.buffers, 9_600);
    assert_eq!(count.constants, 0);
    // 20 convs, 20 BNs with 4 tensors each, fc weight and bias.
    assert_eq!(count.tensors, 20 + 20 * 4 + 2);
}

#[test]
fn resnet50_full_parameter_count() {
    let count = ResNetConfig::resnet50(1000, 224, 0).param_count();
    // torchvision's resnet50: 25,557,032 parameters, 53,120 BatchNorm running-statistics
    // elements.
    assert_eq!(count.trainable, 25_557_032);
    assert_eq!(count.buffers, 53_120);
    // 53 convs, 53 BNs with 4 tensors each, fc weight and bias.
    assert_eq!(count.tensors, 53 + 53 * 4 + 2);
}

#[test]
fn resnet18_full_build_matches_its_count() {
    let cfg = ResNetConfig::new(1000, 224, 5);
    let m = cfg.build();
    assert_eq!(initializer_elements(&m), 11_689_512 + 9_600);
    assert_eq!(cfg.param_count().total_elements(), initializer_elements(&m));
}

#[test]
fn resnet18_small_structure() {
    let cfg = ResNetConfig::new(10, 64, 3).width_div(8);
    let m = cfg.build();
    assert_eq!(count_ops(&m, "Conv"), 20);
    assert_eq!(count_ops(&m, "BatchNormalization"), 20);
    assert_eq!(count_ops(&m, "Add"), 8);
    assert_eq!(count_ops(&m, "Relu"), 17);
    assert_eq!(count_ops(&m, "MaxPool"), 1);
    assert_eq!(count_ops(&m, "GlobalAveragePool"), 1);
    assert_eq!(count_ops(&m, "Gemm"), 1);
    assert_eq!(initializer(&m, "conv1.weight").dims, vec![8, 3, 7, 7]);
    assert_eq!(
        initializer(&m, "layer2.0.downsample.0.weight").dims,
        vec![16, 8, 1, 1]
    );
    assert_eq!(initializer(&m, "layer4.1.bn2.running_var").dims, vec![64]);
    assert_eq!(initializer(&m, "fc.weight").dims, vec![10, 64]);
    let g = graph(&m);
    assert_eq!(g.node.last().unwrap().output, vec![MODEL_OUTPUT.to_owned()]);
    assert_eq!(cfg.param_count().total_elements(), initializer_elements(&m));
}

#[test]
fn same_seed_same_bytes() {
    let a = encode_model(
        &VggConfig::new(10, 32, 9)
            .width_div(16)
            .classifier_width(32)
            .build(),
    );
    let b = encode_model(
        &VggConfig::new(10, 32, 9)
            .width_div(16)
            .classifier_width(32)
            .build(),
    );
    let c = encode_model(
        &VggConfig::new(10, 32, 10)
            .width_div(16)
            .classifier_width(32)
            .build(),
    );
    assert_eq!(a, b);
    assert_ne!(a, c);
    let a = encode_model(&ResNetConfig::new(10, 32, 9).width_div(16).build());
    let b = encode_model(&ResNetConfig::new(10, 32, 9).width_div(16).build());
    let c = encode_model(&ResNetConfig::new(10, 32, 10).width_div(16).build());
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_eq!(random_normal(4, 100, 1.0), random_normal(4, 100, 1.0));
    assert_ne!(random_normal(4, 100, 1.0), random_normal(5, 100, 1.0));
}

#[test]
fn temp_model_writes_a_readable_file() {
    let m = small_model();
    let (dir, path) = temp_model(&m);
    assert!(path.starts_with(dir.path()));
    assert_eq!(lrp_onnx::read_model(&path).expect("read"), m);
    let other = dir.path().join("again.onnx");
    OnnxBuilder::new("w", 17).write(&other).expect("write");
    assert_eq!(
        graph(&lrp_onnx::read_model(&other).unwrap())
            .name
            .as_deref(),
        Some("w")
    );
}

#[test]
fn random_helpers_have_the_requested_range() {
    let u = random_uniform(1, 1000, -2.0, 3.0);
    assert!(u.iter().all(|&v| (-2.0..3.0).contains(&v)));
    let n = random_normal(1, 10_001, 2.0);
    assert_eq!(n.len(), 10_001);
    let var = n.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / n.len() as f64;
    assert!((var / 4.0 - 1.0).abs() < 0.05, "var {var}");
}

/// Materialises the real VGG16 (553 MB of weights; about 1.2 GB at peak with the encoding).
#[test]
fn vgg16_full_build_matches_its_count() {
    let m = vgg16(1000, 224, 1);
    assert_eq!(initializer_elements(&m), 138_357_544);
    assert!(encode_model(&m).len() > 553_000_000);
}

#[test]
fn torch_image_batches_lie_inside_their_box() {
    let (x, low, high) = crate::torch_image_batch(7, 2, 5);
    assert_eq!(x.len(), 2 * 3 * 25);
    // Pixel 0 and 255 of channel 0 under torchvision's normalisation.
    assert!((low[0] - (0.0 - 0.485) / 0.229).abs() < 1e-6);
    assert!((high[0] - (1.0 - 0.485) / 0.229).abs() < 1e-6);
    for (i, &v) in x.iter().enumerate() {
        let c = (i / 25) % 3;
        assert!(v > low[c] && v < high[c], "value {v} of channel {c}");
    }
    assert_eq!(crate::torch_image_batch(7, 2, 5).0, x, "seeded");
}
