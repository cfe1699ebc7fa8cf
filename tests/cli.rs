//! The `lrp-graph` command line: convert, inspect, predict, and one clear error for bad input.

mod common;

use std::path::Path;

use common::*;

fn convert(model: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "convert",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    lrp(&args)
}

#[test]
fn convert_then_predict_matches_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    for name in FIXTURES {
        let ron = dir.path().join(format!("{name}.ron"));
        let o = convert(&fixture(&format!("{name}.onnx")), &ron, &[]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("check: outputs match"),
            "{}",
            stderr(&o)
        );
        assert!(ron.with_extension("safetensors").is_file());
        let logits = dir.path().join(format!("{name}.logits.npy"));
        let input = fixture(&format!("{name}.input.npy"));
        let o = lrp(&[
            "predict",
            ron.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--logits",
            logits.to_str().unwrap(),
            "--top",
            "3",
        ]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let expected = read_npy(&fixture(&format!("{name}.expected.npy")));
        let got = read_npy(&logits);
        if *name == "mlp" {
            // The model ends in a Softmax: --logits writes its input; the probabilities printed
            // are the softmax of those logits, which is the model's output.
            let text = stdout(&o);
            let best = expected.row_max_prob(0);
            assert!(text.contains(&format!("p = {best:.6}")), "{text}");
        } else {
            let (d, s) = max_diff(&got, &expected);
            assert!(d <= 1e-5 * s, "{name}: max |Δ| = {d}, max |y| = {s}");
        }
        assert_eq!(
            stdout(&o).matches("   1. class").count(),
            expected.shape()[0]
        );
    }
}

trait RowMax {
    fn row_max_prob(&self, row: usize) -> f32;
}

impl RowMax for ndarray::ArrayD<f32> {
    fn row_max_prob(&self, row: usize) -> f32 {
        self.index_axis(ndarray::Axis(0), row)
            .iter()
            .fold(0f32, |m, &v| m.max(v))
    }
}

#[test]
fn inspect_lists_every_node_with_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let ron = dir.path().join("vgg.ron");
    assert!(
        convert(
            &fixture("vgg_small.onnx"),
            &ron,
            &["--no-check", "--preprocess", "torch"]
        )
        .status
        .success()
    );
    let o = lrp(&["inspect", ron.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("input input [N, 3, 32, 32] NCHW"), "{text}");
    assert!(
        text.contains("preprocess RGB scale 0.003921569 mean [0.485, 0.456, 0.406]"),
        "{text}"
    );
    assert!(text.contains("output "), "{text}");
    let graph = lrp_ir::Graph::load(&ron).unwrap();
    for n in graph.nodes() {
        assert!(text.contains(&n.name), "node {} missing:\n{text}", n.name);
    }
}

#[test]
fn mnist_demo_images_and_npy_agree() {
    let root = root();
    let dir = tempfile::tempdir().unwrap();
    let ron = dir.path().join("mnist.ron");
    let o = convert(
        &root.join("graphs/mnist/mnist_cnn.onnx"),
        &ron,
        &[
            "--preprocess",
            "scale=1/255",
            "--labels",
            root.join("graphs/mnist/labels.txt").to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let from_npy = dir.path().join("a.npy");
    let o = lrp(&[
        "predict",
        ron.to_str().unwrap(),
        "-i",
        root.join("graphs/mnist/examples/examples.npy")
            .to_str()
            .unwrap(),
        "--logits",
        from_npy.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let expected = read_npy(&root.join("graphs/mnist/expected_logits.npy"));
    let (d, s) = max_diff(&read_npy(&from_npy), &expected);
    assert!(d <= 1e-5 * s, "max |Δ| = {d}");
    // The single-digit PNGs, one by one, give the same logits as their rows of examples.npy.
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("graphs/mnist/examples/examples.json")).unwrap(),
    )
    .unwrap();
    let items = meta
        .as_array()
        .or_else(|| meta["examples"].as_array())
        .expect("a list of examples");
    for (row, item) in items.iter().enumerate() {
        let file = item["file"]
            .as_str()
            .or_else(|| item["filename"].as_str())
            .expect("file name");
        let png = root.join("graphs/mnist/examples").join(file);
        let out = dir.path().join(format!("{row}.npy"));
        let o = lrp(&[
            "predict",
            ron.to_str().unwrap(),
            "-i",
            png.to_str().unwrap(),
            "--logits",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let got = read_npy(&out);
        let want = expected
            .index_axis(ndarray::Axis(0), row)
            .to_owned()
            .insert_axis(ndarray::Axis(0))
            .into_dyn();
        let (d, s) = max_diff(&got, &want);
        assert!(d <= 1e-5 * s, "{file}: max |Δ| = {d}");
        if let Some(label) = file
            .strip_prefix("digit_")
            .and_then(|f| f.strip_suffix(".png"))
        {
            let names = [
                "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
            ];
            let name = names[label.parse::<usize>().unwrap()];
            let first = stdout(&o).lines().nth(1).unwrap_or_default().to_string();
            assert!(first.ends_with(name), "{file}: {first}");
        }
    }
}

// ---- bad input: exit code 2, one line naming the culprit, nothing half-written ----

#[test]
fn missing_model_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.ron");
    let o = convert(&dir.path().join("nope.onnx"), &out, &[]);
    assert_fails(&o, 2, &["nope.onnx"]);
    assert!(files_in(dir.path()).is_empty());
}

#[test]
fn not_onnx_and_truncated() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["bad/not_onnx.onnx", "bad/truncated.onnx"] {
        let o = convert(&fixture(f), &dir.path().join("x.ron"), &[]);
        assert_fails(
            &o,
            2,
            &[f.trim_start_matches("bad/"), "not a valid ONNX model"],
        );
    }
    assert!(files_in(dir.path()).is_empty());
}

#[test]
fn external_data_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let o = convert(
        &fixture("bad/external_data.onnx"),
        &dir.path().join("x.ron"),
        &[],
    );
    assert_fails(&o, 2, &["external_data.onnx", "fc.weight", "external data"]);
}

#[test]
fn unsupported_ops_are_all_listed() {
    let dir = tempfile::tempdir().unwrap();
    let o = convert(
        &fixture("bad/unsupported_op.onnx"),
        &dir.path().join("x.ron"),
        &[],
    );
    assert_fails(
        &o,
        2,
        &["unsupported_op.onnx", "Erf", "Cos", "supported ops: Add"],
    );
}

#[test]
fn two_inputs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let o = convert(
        &fixture("bad/two_inputs.onnx"),
        &dir.path().join("x.ron"),
        &[],
    );
    assert_fails(&o, 2, &["two_inputs.onnx", "2 inputs", "input_a"]);
}

#[test]
fn keras_and_unknown_formats_get_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let h5 = dir.path().join("m.h5");
    std::fs::write(&h5, b"\x89HDF\r\n\x1a\n").unwrap();
    assert_fails(
        &convert(&h5, &dir.path().join("x.ron"), &[]),
        2,
        &["m.h5", "Keras"],
    );
    let txt = dir.path().join("m.txt");
    std::fs::write(&txt, b"hello").unwrap();
    assert_fails(
        &convert(&txt, &dir.path().join("x.ron"), &[]),
        2,
        &["m.txt", ".onnx"],
    );
}

#[test]
fn bad_preprocess_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.ron");
    let o = convert(
        &fixture("vgg_small.onnx"),
        &out,
        &["--no-check", "--preprocess", "scale=abc"],
    );
    assert_fails(&o, 2, &["--preprocess", "scale"]);
    let labels = dir.path().join("labels.txt");
    std::fs::write(&labels, "a\nb\nc\n").unwrap();
    let o = convert(
        &fixture("vgg_small.onnx"),
        &out,
        &["--no-check", "--labels", labels.to_str().unwrap()],
    );
    assert_fails(&o, 2, &["--labels", "3 labels"]);
    let o = convert(
        &fixture("mlp.onnx"),
        &out,
        &["--no-check", "--preprocess", "caffe"],
    );
    assert_fails(&o, 2, &["--preprocess", "not an image input"]);
    assert!(!out.exists());
}

#[test]
fn unwritable_output_paths() {
    let dir = tempfile::tempdir().unwrap();
    let o = convert(
        &fixture("mlp.onnx"),
        &dir.path().join("no/such/dir/x.ron"),
        &["--no-check"],
    );
    assert_fails(&o, 2, &["no/such/dir"]);
    let ron = dir.path().join("m.ron");
    assert!(
        convert(&fixture("mlp.onnx"), &ron, &["--no-check"])
            .status
            .success()
    );
    let bad = dir.path().join("missing/l.npy");
    let input = fixture("mlp.input.npy");
    let o = lrp(&[
        "predict",
        ron.to_str().unwrap(),
        "-i",
        input.to_str().unwrap(),
        "--logits",
        bad.to_str().unwrap(),
    ]);
    assert_fails(&o, 2, &["missing/l.npy"]);
    assert_eq!(files_in(dir.path()), ["m.ron", "m.safetensors"]);
}

#[test]
fn inputs_of_the_wrong_rank_shape_or_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let ron = dir.path().join("m.ron");
    assert!(
        convert(&fixture("vgg_small.onnx"), &ron, &["--no-check"])
            .status
            .success()
    );
    let predict = |input: &Path| {
        lrp(&[
            "predict",
            ron.to_str().unwrap(),
            "-i",
            input.to_str().unwrap(),
        ])
    };

    let wrong_rank = dir.path().join("rank.npy");
    lrp_io::write_npy(
        &wrong_rank,
        &ndarray::ArrayD::zeros(ndarray::IxDyn(&[3, 32, 32])),
    )
    .unwrap();
    assert_fails(&predict(&wrong_rank), 2, &["rank.npy", "[N, 3, 32, 32]"]);

    let wrong_shape = dir.path().join("shape.npy");
    lrp_io::write_npy(
        &wrong_shape,
        &ndarray::ArrayD::zeros(ndarray::IxDyn(&[1, 3, 32, 31])),
    )
    .unwrap();
    assert_fails(&predict(&wrong_shape), 2, &["shape.npy", "[1, 3, 32, 31]"]);

    // int64 .npy: a hand-written header.
    let ints = dir.path().join("ints.npy");
    let header = "{'descr': '<i8', 'fortran_order': False, 'shape': (1, 3, 32, 32), }";
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    let pad = 64 - (10 + header.len() + 1) % 64;
    let hlen = (header.len() + pad + 1) as u16;
    bytes.extend_from_slice(&hlen.to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(std::iter::repeat_n(b' ', pad));
    bytes.push(b'\n');
    bytes.extend(std::iter::repeat_n(0u8, 8 * 3 * 32 * 32));
    std::fs::write(&ints, bytes).unwrap();
    assert_fails(&predict(&ints), 2, &["ints.npy", "int64"]);

    let nan = dir.path().join("nan.npy");
    let mut a = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[1, 3, 32, 32]));
    a[[0, 1, 2, 3]] = f32::NAN;
    lrp_io::write_npy(&nan, &a).unwrap();
    assert_fails(&predict(&nan), 2, &["nan.npy", "NaN"]);

    let img = dir.path().join("broken.png");
    std::fs::write(&img, b"this is not a png").unwrap();
    assert_fails(&predict(&img), 2, &["broken.png", "decode"]);

    let missing = dir.path().join("gone.npy");
    assert_fails(&predict(&missing), 2, &["gone.npy"]);
}

#[test]
fn broken_graph_files() {
    let dir = tempfile::tempdir().unwrap();
    let ron = dir.path().join("m.ron");
    assert!(
        convert(&fixture("mlp.onnx"), &ron, &["--no-check"])
            .status
            .success()
    );
    let text = std::fs::read_to_string(&ron).unwrap();
    let bad = dir.path().join("bad.ron");
    std::fs::write(&bad, text.replacen("op: Relu", "op: Relux", 1)).unwrap();
    assert_fails(
        &lrp(&["inspect", bad.to_str().unwrap()]),
        2,
        &["bad.ron:", "Relux"],
    );
    std::fs::write(
        &bad,
        text.replacen(
            "weights: \"m.safetensors\"",
            "weights: \"other.safetensors\"",
            1,
        ),
    )
    .unwrap();
    assert_fails(
        &lrp(&["inspect", bad.to_str().unwrap()]),
        2,
        &["other.safetensors"],
    );
}

#[test]
fn usage_errors_exit_2() {
    let o = lrp(&["predict"]);
    assert_eq!(o.status.code(), Some(2));
    let o = lrp(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    let o = lrp(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("convert"));
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_the_feature_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let ron = dir.path().join("m.ron");
    assert!(
        convert(&fixture("mlp.onnx"), &ron, &["--no-check"])
            .status
            .success()
    );
    let input = fixture("mlp.input.npy");
    let o = lrp(&[
        "predict",
        ron.to_str().unwrap(),
        "-i",
        input.to_str().unwrap(),
        "--device",
        "cuda",
    ]);
    assert_fails(&o, 2, &["CUDA", "--features cuda"]);
}

#[test]
fn zero_threads_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ron = dir.path().join("m.ron");
    let o = convert(&fixture("mlp.onnx"), &ron, &["--no-check"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let input = fixture("mlp.input.npy");
    let (ron, input) = (ron.to_str().unwrap(), input.to_str().unwrap());
    let o = lrp(&["predict", ron, "--input", input, "--threads", "0"]);
    assert_fails(&o, 2, &["--threads", "at least 1"]);
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let o = lrp(&[
        "explain",
        ron,
        "--input",
        input,
        "--out",
        out,
        "--threads",
        "0",
    ]);
    assert_fails(&o, 2, &["--threads", "at least 1"]);
    let o = lrp(&["predict", ron, "--input", input, "--threads", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
}
