//! `lrp-graph convert`.

use std::path::PathBuf;

use lrp_onnx::ModelProto;

use anyhow::{Context, Result, anyhow, bail};
use lrp_ir::{Graph, Preprocess};
use lrp_runtime::{Device, ExportOutputs, Forward, RuntimeError, run_onnx_bytes};
use ndarray::{ArrayD, IxDyn};

use crate::args::ConvertArgs;

/// Largest difference between the converted graph's and the original model's outputs, relative
/// to the largest output magnitude, that `convert` accepts.
pub const CHECK_TOLERANCE: f32 = 1e-4;

pub fn run(a: ConvertArgs) -> Result<()> {
    let ext = a
        .model
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    // The ONNX model, kept for the ONNX Runtime self-check (Keras models have none).
    let (model, imported) = match ext.as_str() {
        "onnx" => {
            let model = lrp_onnx::read_model(&a.model)?;
            let stem = a
                .model
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into());
            let imported = lrp_import::import_onnx_model(&model, &a.model, &stem)?;
            (Some(model), imported)
        }
        "h5" | "hdf5" | "keras" => (None, lrp_import::import_keras(&a.model)?),
        _ => bail!(
            "{}: unknown model format (expected a .onnx, .keras or .h5 file)",
            a.model.display()
        ),
    };
    for w in &imported.warnings {
        eprintln!("warning: {}: {w}", a.model.display());
    }
    let mut graph = imported.graph;
    if let Some(p) = &a.preprocess {
        let p: Preprocess = p.parse().map_err(|e| anyhow!("--preprocess: {e}"))?;
        graph.set_preprocess(Some(p)).context("--preprocess")?;
    }
    if let Some(path) = &a.labels {
        let labels = read_labels(path)?;
        graph
            .set_labels(Some(labels))
            .with_context(|| format!("--labels {}", path.display()))?;
    }
    if let Some(name) = &a.name {
        graph.set_name(name.clone());
    }
    let out = a
        .output
        .clone()
        .unwrap_or_else(|| a.model.with_extension("ron"));
    if out.extension().is_none_or(|e| e != "ron") {
        bail!(
            "{}: the output graph must have the extension .ron",
            out.display()
        );
    }
    if let (false, Some(model)) = (a.no_check, &model) {
        match check(model, &graph) {
            Ok((diff, scale)) => {
                let rel = if scale > 0.0 { diff / scale } else { diff };
                if rel > CHECK_TOLERANCE {
                    return Err(anyhow!(RuntimeError::Ort {
                        graph: graph.def().name.clone(),
                        message: format!(
                            "the converted graph does not reproduce the model: max |Δ| = {diff:.3e} with max |y| = {scale:.3e} on a random batch; nothing was written (please report this model)"
                        ),
                    }));
                }
                eprintln!(
                    "check: outputs match ONNX Runtime on the original model (max |Δ| = {diff:.2e}, max |y| = {scale:.2e})"
                );
            }
            Err(e @ RuntimeError::Library(_)) => {
                eprintln!("warning: check skipped: {e}");
            }
            Err(e) => return Err(e.into()),
        }
    }
    graph.save(&out)?;
    let params: usize = graph.weights().iter().map(|(_, t)| t.len()).sum();
    println!(
        "wrote {} and {} ({} nodes, {} parameters)",
        out.display(),
        out.with_extension("safetensors").display(),
        graph.nodes().len(),
        params
    );
    Ok(())
}

/// Runs the original model and the converted graph on one deterministic random batch (of 2, or
/// of the model's fixed batch size) and returns (max |Δ|, max |y|).
fn check(model: &ModelProto, graph: &Graph) -> Result<(f32, f32), RuntimeError> {
    let mut shape = vec![fixed_batch(model, &graph.input().name).unwrap_or(2)];
    shape.extend_from_slice(&graph.input().shape);
    let n: usize = shape.iter().product();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect();
    let x = ArrayD::from_shape_vec(IxDyn(&shape), values).expect("shape product");
    let reference = run_onnx_bytes(&lrp_onnx::encode_model(model), x.view())?;
    let mut fwd = Forward::new(graph, Device::Cpu, ExportOutputs::Final, None)?;
    let ours = fwd.run(x.view())?;
    let y = ours.get(graph.output_id()).expect("the output is exported");
    let r = &reference[0];
    if r.len() != y.len() {
        return Err(RuntimeError::Ort {
            graph: graph.def().name.clone(),
            message: format!(
                "the converted graph's output has shape {:?}, the model's {:?}",
                y.shape(),
                r.shape()
            ),
        });
    }
    let diff = y
        .iter()
        .zip(r.iter())
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let scale = r.iter().fold(0f32, |m, v| m.max(v.abs()));
    Ok((diff, scale))
}

/// The fixed size of the batch axis of input `name`, if the model declares one.
fn fixed_batch(model: &ModelProto, name: &str) -> Option<usize> {
    use lrp_onnx::proto::{tensor_shape_proto::dimension::Value as D, type_proto::Value as T};
    let input = model
        .graph
        .as_ref()?
        .input
        .iter()
        .find(|i| i.name() == name)?;
    let Some(T::TensorType(t)) = input.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    match t.shape.as_ref()?.dim.first()?.value {
        Some(D::DimValue(v)) if v > 0 => Some(v as usize),
        _ => None,
    }
}

/// Reads a labels file: one label per line, surrounding whitespace trimmed, trailing empty
/// lines dropped.
/// The 1000 ImageNet-1k class names in the usual class-index order (torchvision's and
/// keras.applications' order), bundled for `--labels imagenet`.
pub const IMAGENET_LABELS: &str = include_str!("../../../graphs/imagenet1k_labels.txt");

pub fn read_labels(path: &PathBuf) -> Result<Vec<String>> {
    let text = if path.as_os_str() == "imagenet" && !path.exists() {
        IMAGENET_LABELS.to_string()
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("--labels {}: cannot read", path.display()))?
    };
    let mut labels: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    while labels.last().is_some_and(|l| l.is_empty()) {
        labels.pop();
    }
    if labels.is_empty() {
        bail!("--labels {}: the file holds no labels", path.display());
    }
    Ok(labels)
}
