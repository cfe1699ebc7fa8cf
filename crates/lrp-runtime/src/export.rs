//! IR → ONNX (opset 17).

use std::sync::Arc;

use lrp_ir::{Graph, Op, SharedTensor};
use lrp_onnx::proto::{
    self, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use lrp_onnx::{attr_type, dtype};

/// The opset of exported models.
pub const EXPORT_OPSET: i64 = 17;

/// Which node outputs the exported model exposes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportOutputs {
    /// Only the graph's output.
    Final,
    /// The graph's output and these nodes' outputs.
    Selected(Vec<lrp_ir::NodeId>),
    /// Every node's output (the graph's output first).
    All,
}

/// Name of the initializer that holds weight tensor `key` (prefixed so it cannot collide with a
/// node name).
fn init_name(key: &str) -> String {
    format!("param:{key}")
}

/// Byte alignment of each tensor in the weights blob of [`to_onnx`].
const BLOB_ALIGN: usize = 64;

/// The weight tensors the nodes use, in name order.
fn used_weights(graph: &Graph) -> Vec<(&str, ndarray::ArrayViewD<'_, f32>)> {
    let used: std::collections::HashSet<&str> = graph
        .nodes()
        .iter()
        .flat_map(|n| n.params.values().map(String::as_str))
        .collect();
    graph
        .weights()
        .iter()
        .filter(|(k, _)| used.contains(k))
        .collect()
}

/// Where an exported model's weights are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightData<'a> {
    /// In one blob returned beside the model (little-endian f32, each tensor at a multiple of
    /// 64 bytes), which the initializers reference as the external data file named here.
    Blob(&'a str),
    /// Supplied by the caller when the session opens ([`supplied_weights`]: ONNX Runtime's
    /// `AddInitializer`, which uses the caller's memory without a copy, or
    /// `AddExternalInitializers`, which copies). The initializers only declare the tensors:
    /// their external data placeholder names the working directory `.`, because ONNX Runtime
    /// checks that an external data location exists before a supplied initializer replaces it.
    Supplied,
}

/// One weight for [`WeightData::Supplied`]: its initializer name, a shared handle on its values
/// (not a copy), and whether only Dense nodes read it. ONNX Runtime's optimisations rewrite or
/// fold the weights of other nodes (Conv kernels into its blocked layout, batch norms into
/// convolutions), and leave those of its `Gemm` as they are.
#[derive(Debug, Clone)]
pub struct SuppliedWeight {
    /// The initializer's name in the exported model.
    pub name: String,
    /// The values.
    pub tensor: SharedTensor,
    /// Whether Dense nodes, and no others, read it.
    pub dense_only: bool,
}

/// The weights the exported model of `graph` uses, for [`WeightData::Supplied`].
pub fn supplied_weights(graph: &Graph) -> Vec<SuppliedWeight> {
    let not_dense: std::collections::HashSet<&str> = graph
        .nodes()
        .iter()
        .filter(|n| !matches!(n.op, Op::Dense))
        .flat_map(|n| n.params.values().map(String::as_str))
        .collect();
    used_weights(graph)
        .into_iter()
        .map(|(k, _)| SuppliedWeight {
            name: init_name(k),
            tensor: graph.weights().shared(k).expect("a used weight exists"),
            dense_only: !not_dense.contains(k),
        })
        .collect()
}

/// The weights' initializers and, for [`WeightData::Blob`], the blob they reference.
fn weight_initializers(
    graph: &Graph,
    data: WeightData<'_>,
) -> (Vec<TensorProto>, Option<Arc<[u8]>>) {
    let weights = used_weights(graph);
    let (location, offsets, blob) = match data {
        WeightData::Blob(location) => {
            let (blob, offsets) = weights_blob(&weights);
            (location, offsets, Some(blob))
        }
        WeightData::Supplied => (".", vec![0; weights.len()], None),
    };
    let entry = |k: &str, v: String| proto::StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v),
    };
    let inits = weights
        .iter()
        .zip(&offsets)
        .map(|((k, a), &off)| TensorProto {
            name: Some(init_name(k)),
            dims: a.shape().iter().map(|&d| d as i64).collect(),
            data_type: Some(dtype::FLOAT),
            data_location: Some(proto::tensor_proto::DataLocation::External as i32),
            external_data: vec![
                entry("location", location.to_string()),
                entry("offset", off.to_string()),
                entry("length", (a.len() * 4).to_string()),
            ],
            ..Default::default()
        })
        .collect();
    (inits, blob)
}

/// The weights in one blob, each at a multiple of [`BLOB_ALIGN`] bytes (zero padding between
/// them), and their offsets.
fn weights_blob(weights: &[(&str, ndarray::ArrayViewD<'_, f32>)]) -> (Arc<[u8]>, Vec<usize>) {
    let mut offsets = Vec::with_capacity(weights.len() + 1);
    let mut total = 0usize;
    for (_, a) in weights {
        offsets.push(total);
        total = (total + a.len() * 4).next_multiple_of(BLOB_ALIGN);
    }
    offsets.push(total);
    let mut blob = Arc::<[u8]>::new_uninit_slice(total);
    {
        let bytes = Arc::get_mut(&mut blob).expect("just made");
        for ((_, a), span) in weights.iter().zip(offsets.windows(2)) {
            let a = a.as_standard_layout();
            let (data, padding) = bytes[span[0]..span[1]].split_at_mut(a.len() * 4);
            for (d, v) in data.chunks_exact_mut(4).zip(a.iter()) {
                for (d, b) in d.iter_mut().zip(v.to_le_bytes()) {
                    d.write(b);
                }
            }
            padding.fill(std::mem::MaybeUninit::new(0));
        }
    }
    offsets.pop();
    // SAFETY: every byte was written above: each tensor's data and the padding after it.
    (unsafe { blob.assume_init() }, offsets)
}

/// Exports `graph` as an ONNX model whose tensors are named after the IR nodes. The weights
/// are not in the model: see [`WeightData`] (the blob is returned for [`WeightData::Blob`]).
pub fn to_onnx(
    graph: &Graph,
    outputs: &ExportOutputs,
    weights: WeightData<'_>,
) -> (ModelProto, Option<Arc<[u8]>>) {
    let mut nodes = Vec::with_capacity(graph.nodes().len());
    let (mut inits, blob) = weight_initializers(graph, weights);
    for &id in graph.topo_order() {
        let n = &graph.nodes()[id];
        let mut inputs = n.inputs.clone();
        let param = |p: &str| n.params.get(p).map(|k| init_name(k));
        let mut extra = |suffix: &str, t: TensorProto| -> String {
            let name = format!("const:{}:{suffix}", n.name);
            inits.push(TensorProto {
                name: Some(name.clone()),
                ..t
            });
            name
        };
        let (op_type, attrs): (&str, Vec<AttributeProto>) = match &n.op {
            Op::Conv {
                kernel,
                strides,
                pads,
                dilations,
                groups,
            } => {
                inputs.push(param("weight").expect("validated"));
                inputs.extend(param("bias"));
                (
                    "Conv",
                    vec![
                        ints("kernel_shape", kernel),
                        ints("strides", strides),
                        ints("pads", pads),
                        ints("dilations", dilations),
                        int("group", *groups as i64),
                    ],
                )
            }
            Op::Dense => {
                inputs.push(param("weight").expect("validated"));
                inputs.extend(param("bias"));
                ("Gemm", vec![int("transB", 1)])
            }
            Op::Relu => ("Relu", vec![]),
            Op::LeakyRelu { alpha } => ("LeakyRelu", vec![float("alpha", *alpha)]),
            Op::Elu { alpha } => ("Elu", vec![float("alpha", *alpha)]),
            Op::ThresholdedRelu { alpha } => ("ThresholdedRelu", vec![float("alpha", *alpha)]),
            Op::Selu { alpha, gamma } => {
                ("Selu", vec![float("alpha", *alpha), float("gamma", *gamma)])
            }
            Op::Sigmoid => ("Sigmoid", vec![]),
            Op::Tanh => ("Tanh", vec![]),
            Op::Clip { min, max } => {
                inputs.push(extra("min", f32_tensor("", &[], [*min])));
                inputs.push(extra("max", f32_tensor("", &[], [*max])));
                ("Clip", vec![])
            }
            Op::MaxPool {
                kernel,
                strides,
                pads,
                dilations,
                ceil_mode,
            } => (
                "MaxPool",
                vec![
                    ints("kernel_shape", kernel),
                    ints("strides", strides),
                    ints("pads", pads),
                    ints("dilations", dilations),
                    int("ceil_mode", *ceil_mode as i64),
                ],
            ),
            Op::AvgPool {
                kernel,
                strides,
                pads,
                count_include_pad,
                ceil_mode,
            } => (
                "AveragePool",
                vec![
                    ints("kernel_shape", kernel),
                    ints("strides", strides),
                    ints("pads", pads),
                    int("count_include_pad", *count_include_pad as i64),
                    int("ceil_mode", *ceil_mode as i64),
                ],
            ),
            Op::GlobalAvgPool => ("GlobalAveragePool", vec![]),
            Op::GlobalMaxPool => ("GlobalMaxPool", vec![]),
            Op::Flatten => ("Flatten", vec![int("axis", 1)]),
            Op::Reshape { shape } => {
                let target: Vec<i64> = std::iter::once(0)
                    .chain(shape.iter().map(|&d| d as i64))
                    .collect();
                inputs.push(extra("shape", i64_tensor(&target)));
                ("Reshape", vec![])
            }
            Op::Transpose { perm } => ("Transpose", vec![ints("perm", perm)]),
            Op::Squeeze { axes } | Op::Unsqueeze { axes } => {
                let v: Vec<i64> = axes.iter().map(|&a| a as i64).collect();
                inputs.push(extra("axes", i64_tensor(&v)));
                (
                    if matches!(n.op, Op::Squeeze { .. }) {
                        "Squeeze"
                    } else {
                        "Unsqueeze"
                    },
                    vec![],
                )
            }
            Op::BatchNorm { epsilon } => {
                for p in ["scale", "bias", "mean", "var"] {
                    inputs.push(param(p).expect("validated"));
                }
                ("BatchNormalization", vec![float("epsilon", *epsilon)])
            }
            Op::Add => (if inputs.len() == 2 { "Add" } else { "Sum" }, vec![]),
            Op::Concat { axis } => ("Concat", vec![int("axis", *axis as i64)]),
            Op::Pad { pads } => {
                let v: Vec<i64> = pads.iter().map(|&a| a as i64).collect();
                inputs.push(extra("pads", i64_tensor(&v)));
                ("Pad", vec![])
            }
            Op::Crop { crops } => {
                let rank = crops.len() / 2;
                let shape = graph.shape(id);
                let starts: Vec<i64> = (1..rank).map(|a| crops[a] as i64).collect();
                let ends: Vec<i64> = (1..rank)
                    .map(|a| (crops[a] + shape[a - 1]) as i64)
                    .collect();
                let axes: Vec<i64> = (1..rank as i64).collect();
                inputs.push(extra("starts", i64_tensor(&starts)));
                inputs.push(extra("ends", i64_tensor(&ends)));
                inputs.push(extra("axes", i64_tensor(&axes)));
                ("Slice", vec![])
            }
            Op::Softmax { axis } => ("Softmax", vec![int("axis", *axis as i64)]),
            Op::Dropout | Op::Identity => ("Identity", vec![]),
            other => unreachable!("op {} has no ONNX export", other.kind()),
        };
        nodes.push(NodeProto {
            name: Some(n.name.clone()),
            op_type: Some(op_type.into()),
            input: inputs,
            output: vec![n.name.clone()],
            attribute: attrs,
            ..Default::default()
        });
    }
    let out_id = graph.output_id();
    let mut out_ids = vec![out_id];
    match outputs {
        ExportOutputs::Final => {}
        ExportOutputs::Selected(ids) => {
            for &i in ids {
                if !out_ids.contains(&i) {
                    out_ids.push(i);
                }
            }
        }
        ExportOutputs::All => {
            out_ids.extend(graph.topo_order().iter().copied().filter(|&i| i != out_id))
        }
    }
    let output = out_ids
        .iter()
        .map(|&i| value_info(&graph.nodes()[i].name, graph.shape(i)))
        .collect();
    let input = graph.input();
    let model = ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(EXPORT_OPSET),
        }],
        producer_name: Some("lrp-graph".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        graph: Some(GraphProto {
            name: Some(graph.def().name.clone()),
            node: nodes,
            initializer: inits,
            input: vec![value_info(&input.name, &input.shape)],
            output,
            ..Default::default()
        }),
        ..Default::default()
    };
    (model, blob)
}

fn value_info(name: &str, per_sample: &[usize]) -> ValueInfoProto {
    let mut dims = vec![Dim::Symbolic("N")];
    dims.extend(per_sample.iter().map(|&d| Dim::Fixed(d)));
    f32_value_info(name, &dims)
}

/// One axis of a tensor type: a named (symbolic) size or a fixed one.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Dim<'a> {
    Symbolic(&'a str),
    Fixed(usize),
}

/// The type of an f32 tensor named `name` with axes `dims`.
pub(crate) fn f32_value_info(name: &str, dims: &[Dim<'_>]) -> ValueInfoProto {
    use proto::tensor_shape_proto::{Dimension, dimension::Value as D};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match *d {
                Dim::Symbolic(s) => D::DimParam(s.into()),
                Dim::Fixed(n) => D::DimValue(n as i64),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(proto::type_proto::Value::TensorType(
                proto::type_proto::Tensor {
                    elem_type: Some(dtype::FLOAT),
                    shape: Some(TensorShapeProto { dim }),
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn f32_tensor(name: &str, shape: &[usize], values: impl IntoIterator<Item = f32>) -> TensorProto {
    let values = values.into_iter();
    let mut raw = Vec::with_capacity(values.size_hint().0 * 4);
    for v in values {
        raw.extend_from_slice(&v.to_le_bytes());
    }
    TensorProto {
        name: Some(name.into()),
        dims: shape.iter().map(|&d| d as i64).collect(),
        data_type: Some(dtype::FLOAT),
        raw_data: Some(raw),
        ..Default::default()
    }
}

fn i64_tensor(values: &[i64]) -> TensorProto {
    TensorProto {
        dims: vec![values.len() as i64],
        data_type: Some(dtype::INT64),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

fn attr(name: &str, ty: i32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(ty),
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        i: Some(v),
        ..attr(name, attr_type::INT)
    }
}

fn float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        f: Some(v),
        ..attr(name, attr_type::FLOAT)
    }
}

fn ints(name: &str, v: &[usize]) -> AttributeProto {
    AttributeProto {
        ints: v.iter().map(|&x| x as i64).collect(),
        ..attr(name, attr_type::INTS)
    }
}
