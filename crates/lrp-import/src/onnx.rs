//! ONNX → graph IR.
//!
//! Two passes, as ONNX graphs are topologically sorted: first every node's op type is checked
//! (all unsupported nodes are reported at once), then the nodes are converted in order, with
//! shapes inferred as they are added so that `auto_pad`, `Reshape` targets and negative axes
//! resolve to explicit IR attributes. Constant tensors (initializers and `Constant` nodes) become
//! parameters of the nodes that read them; `MatMul` + constant `Add` becomes one `Dense`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use lrp_ir::op::ParamShapes;
use lrp_ir::{Layout, NodeDef, Op, Weights};
use lrp_onnx::proto::{self, AttributeProto, ModelProto, NodeProto, TensorProto};
use lrp_onnx::{attr_type, dtype};
use ndarray::{Array2, ArrayD, IxDyn};

use crate::error::ImportError;
use crate::{Converted, Imported};

/// ONNX op types this importer converts.
pub const SUPPORTED_OPS: &[&str] = &[
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Clip",
    "Concat",
    "Constant",
    "Conv",
    "Dropout",
    "Elu",
    "Flatten",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Identity",
    "LeakyRelu",
    "MatMul",
    "MaxPool",
    "Pad",
    "Relu",
    "Reshape",
    "Selu",
    "Sigmoid",
    "Slice",
    "Softmax",
    "Squeeze",
    "Tanh",
    "ThresholdedRelu",
    "Transpose",
    "Unsqueeze",
];

/// Opset versions of the default domain this importer reads.
pub const OPSETS: std::ops::RangeInclusive<i64> = 7..=23;

/// Reads and converts an `.onnx` file.
pub fn import_onnx(path: &Path) -> Result<Imported, ImportError> {
    let model = lrp_onnx::read_model(path)?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    import_onnx_model(&model, path, &name)
}

/// Converts a decoded ONNX model; `path` is used in error messages, `name` names the graph.
pub fn import_onnx_model(
    model: &ModelProto,
    path: &Path,
    name: &str,
) -> Result<Imported, ImportError> {
    let graph = model.graph.as_ref().ok_or_else(|| ImportError::Model {
        path: path.to_owned(),
        node: None,
        op_type: None,
        message: "the model has no graph".into(),
    })?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
        .and_then(|o| o.version)
        .ok_or_else(|| {
            err(
                path,
                None,
                "the model imports no opset of the default ONNX domain",
            )
        })?;
    if !OPSETS.contains(&opset) {
        return Err(err(
            path,
            None,
            format!(
                "opset {opset} is not supported (supported: {}–{})",
                OPSETS.start(),
                OPSETS.end()
            ),
        ));
    }
    let unsupported: Vec<String> = graph
        .node
        .iter()
        .filter(|n| {
            let domain_ok = matches!(n.domain.as_deref(), None | Some("") | Some("ai.onnx"));
            !domain_ok || !SUPPORTED_OPS.contains(&n.op_type())
        })
        .map(|n| {
            let d = n.domain().to_string();
            let t = if d.is_empty() || d == "ai.onnx" {
                n.op_type().to_string()
            } else {
                format!("{d}::{}", n.op_type())
            };
            format!("{t} (node '{}')", node_label(n))
        })
        .collect();
    if !unsupported.is_empty() {
        return Err(err(
            path,
            None,
            format!(
                "unsupported op(s): {}; supported ops: {}",
                unsupported.join(", "),
                SUPPORTED_OPS.join(", ")
            ),
        ));
    }
    let mut cx = Context::new(path, opset, graph)?;
    for node in &graph.node {
        cx.convert(node).map_err(|message| ImportError::Model {
            path: path.to_owned(),
            node: Some(node_label(node)),
            op_type: Some(node.op_type().to_string()),
            message,
        })?;
    }
    cx.finish(graph, name)
}

fn err(path: &Path, node: Option<&NodeProto>, message: impl Into<String>) -> ImportError {
    ImportError::Model {
        path: path.to_owned(),
        node: node.map(node_label),
        op_type: node.map(|n| n.op_type().to_string()),
        message: message.into(),
    }
}

fn node_label(n: &NodeProto) -> String {
    match n.name.as_deref() {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => n.output.first().cloned().unwrap_or_else(|| "?".into()),
    }
}

/// A constant tensor: f32 values or integers.
#[derive(Debug, Clone)]
enum Const {
    F32(ArrayD<f32>),
    I64(Vec<usize>, Vec<i64>),
}

impl Const {
    fn ints(&self) -> Result<Vec<i64>, String> {
        match self {
            Const::I64(_, v) => Ok(v.clone()),
            Const::F32(_) => Err("expected an integer tensor, found a float tensor".into()),
        }
    }
    fn floats(&self) -> Result<ArrayD<f32>, String> {
        match self {
            Const::F32(a) => Ok(a.clone()),
            Const::I64(s, v) => {
                ArrayD::from_shape_vec(IxDyn(s), v.iter().map(|&x| x as f32).collect())
                    .map_err(|e| e.to_string())
            }
        }
    }
}

/// What an ONNX tensor name stands for during conversion.
#[derive(Debug, Clone)]
enum Value {
    /// The graph input or an IR node's output: the IR tensor name.
    Tensor(String),
    /// A constant.
    Const(Const),
}

struct Context<'a> {
    path: &'a Path,
    opset: i64,
    input_name: String,
    input_shape: Vec<usize>,
    values: HashMap<String, Value>,
    nodes: Vec<NodeDef>,
    node_of: HashMap<String, usize>,
    shapes: HashMap<String, Vec<usize>>,
    weights: Weights,
    used_names: HashSet<String>,
    uses: HashMap<String, usize>,
    graph_outputs: HashSet<String>,
    warnings: Vec<String>,
}

impl<'a> Context<'a> {
    fn new(path: &'a Path, opset: i64, graph: &proto::GraphProto) -> Result<Self, ImportError> {
        let mut values = HashMap::new();
        for t in &graph.initializer {
            let c = tensor_const(t)
                .map_err(|m| err(path, None, format!("initializer '{}': {m}", t.name())))?;
            values.insert(t.name().to_string(), Value::Const(c));
        }
        if !graph.sparse_initializer.is_empty() {
            return Err(err(path, None, "sparse initializers are not supported"));
        }
        let inputs: Vec<&proto::ValueInfoProto> = graph
            .input
            .iter()
            .filter(|i| !values.contains_key(i.name()))
            .collect();
        let input = match inputs.as_slice() {
            [one] => *one,
            [] => return Err(err(path, None, "the graph has no (non-initializer) input")),
            many => {
                let names: Vec<&str> = many.iter().map(|i| i.name()).collect();
                return Err(err(
                    path,
                    None,
                    format!(
                        "the graph has {} inputs ({}); only single-input classifiers are supported",
                        many.len(),
                        names.join(", ")
                    ),
                ));
            }
        };
        let input_shape = input_dims(input)
            .map_err(|m| err(path, None, format!("input '{}': {m}", input.name())))?;
        let mut uses: HashMap<String, usize> = HashMap::new();
        for n in &graph.node {
            for i in n.input.iter().filter(|s| !s.is_empty()) {
                *uses.entry(i.clone()).or_default() += 1;
            }
        }
        let graph_outputs: HashSet<String> =
            graph.output.iter().map(|o| o.name().to_string()).collect();
        let input_name = input.name().to_string();
        values.insert(input_name.clone(), Value::Tensor(input_name.clone()));
        let mut shapes = HashMap::new();
        shapes.insert(input_name.clone(), input_shape.clone());
        let used_names = HashSet::from([input_name.clone()]);
        Ok(Context {
            path,
            opset,
            input_name,
            input_shape,
            values,
            nodes: Vec::new(),
            node_of: HashMap::new(),
            shapes,
            weights: Weights::new(),
            used_names,
            uses,
            graph_outputs,
            warnings: Vec::new(),
        })
    }

    fn value(&self, name: &str) -> Result<&Value, String> {
        self.values.get(name).ok_or_else(|| {
            format!("input '{name}' is produced by no earlier node, initializer or graph input")
        })
    }

    /// The IR tensor behind ONNX input `k` of `node`, which must be an activation.
    fn tensor(&self, node: &NodeProto, k: usize) -> Result<String, String> {
        let name = node
            .input
            .get(k)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("input {k} is missing"))?;
        match self.value(name)? {
            Value::Tensor(t) => Ok(t.clone()),
            Value::Const(_) => Err(format!(
                "input {k} ('{name}') is a constant; only computed tensors are supported there"
            )),
        }
    }

    /// The constant behind ONNX input `k`, or None if the input is absent.
    fn opt_const(&self, node: &NodeProto, k: usize) -> Result<Option<Const>, String> {
        match node.input.get(k).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(name) => match self.value(name)? {
                Value::Const(c) => Ok(Some(c.clone())),
                Value::Tensor(_) => Err(format!(
                    "input {k} ('{name}') must be a constant (an initializer or a Constant node)"
                )),
            },
        }
    }

    fn req_const(&self, node: &NodeProto, k: usize, what: &str) -> Result<Const, String> {
        self.opt_const(node, k)?
            .ok_or_else(|| format!("input {k} ({what}) is missing"))
    }

    fn shape(&self, tensor: &str) -> &[usize] {
        &self.shapes[tensor]
    }

    fn fresh_name(&mut self, node: &NodeProto) -> String {
        let base = node_label(node);
        let mut name = base.clone();
        let mut k = 1;
        while self.used_names.contains(&name) {
            k += 1;
            name = format!("{base}_{k}");
        }
        self.used_names.insert(name.clone());
        name
    }

    /// Adds an IR node for `node` with `op`, `inputs` and parameter tensors, infers its shape
    /// and binds ONNX output 0 to it.
    fn emit(
        &mut self,
        node: &NodeProto,
        op: Op,
        inputs: Vec<String>,
        params: Vec<(&str, ArrayD<f32>)>,
    ) -> Result<String, String> {
        let name = self.fresh_name(node);
        let mut pmap = BTreeMap::new();
        for (p, arr) in params {
            let key = format!("{name}.{p}");
            self.weights.insert(key.clone(), arr);
            pmap.insert(p.to_string(), key);
        }
        let def = NodeDef {
            name: name.clone(),
            op,
            inputs,
            params: pmap,
        };
        let shape = self.infer(&def)?;
        self.shapes.insert(name.clone(), shape);
        self.node_of.insert(name.clone(), self.nodes.len());
        self.nodes.push(def);
        self.bind(node, 0, Value::Tensor(name.clone()))?;
        for (k, o) in node.output.iter().enumerate().skip(1) {
            if !o.is_empty() && (self.uses.contains_key(o) || self.graph_outputs.contains(o)) {
                return Err(format!(
                    "output {k} ('{o}') is used, but only the first output is supported"
                ));
            }
        }
        Ok(name)
    }

    fn infer(&self, def: &NodeDef) -> Result<Vec<usize>, String> {
        struct P<'b>(&'b NodeDef, &'b Weights);
        impl ParamShapes for P<'_> {
            fn param_shape(&self, name: &str) -> Option<&[usize]> {
                self.1.shape(self.0.params.get(name)?)
            }
        }
        let ins: Vec<&[usize]> = def.inputs.iter().map(|i| self.shape(i)).collect();
        def.op.infer_shape(&ins, &P(def, &self.weights))
    }

    fn bind(&mut self, node: &NodeProto, k: usize, v: Value) -> Result<(), String> {
        let out = node
            .output
            .get(k)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("output {k} is missing"))?;
        self.values.insert(out.clone(), v);
        Ok(())
    }

    fn warn_unread(&mut self, node: &NodeProto, read: &[&str]) {
        for a in &node.attribute {
            if !read.contains(&a.name()) {
                self.warnings.push(format!(
                    "node '{}' ({}): attribute '{}' ignored",
                    node_label(node),
                    node.op_type(),
                    a.name()
                ));
            }
        }
    }

    fn rank(&self, tensor: &str) -> usize {
        self.shape(tensor).len() + 1
    }

    /// Normalises a possibly negative axis of a tensor of rank `rank`.
    fn axis(&self, a: i64, rank: usize) -> Result<usize, String> {
        let r = rank as i64;
        if a < -r || a >= r {
            return Err(format!("axis {a} is out of range for rank {rank}"));
        }
        Ok(if a < 0 { (a + r) as usize } else { a as usize })
    }

    fn convert(&mut self, node: &NodeProto) -> Result<(), String> {
        let a = Attrs(&node.attribute);
        match node.op_type() {
            "Constant" => {
                let c = constant_value(node)?;
                self.bind(node, 0, Value::Const(c))?;
            }
            "Conv" => self.conv(node, &a)?,
            "Gemm" => self.gemm(node, &a)?,
            "MatMul" => {
                let x = self.tensor(node, 0)?;
                let b = self.req_const(node, 1, "B")?.floats()?;
                if self.shape(&x).len() != 1 || b.ndim() != 2 {
                    return Err(format!(
                        "only [N, K] × [K, M] with a constant right operand is supported (got per-sample input {:?} and B {:?})",
                        self.shape(&x),
                        b.shape()
                    ));
                }
                let w = b
                    .into_dimensionality::<ndarray::Ix2>()
                    .expect("2-D")
                    .t()
                    .to_owned()
                    .into_dyn();
                self.emit(node, Op::Dense, vec![x], vec![("weight", w)])?;
            }
            "Add" => self.add(node)?,
            "Identity" | "Dropout"
                if matches!(
                    self.value(node.input.first().map(String::as_str).unwrap_or(""))?,
                    Value::Const(_)
                ) =>
            {
                // Exporters route shared constants through Identity: keep them constant.
                let c = self.req_const(node, 0, "input")?;
                self.bind(node, 0, Value::Const(c))?;
            }
            "Relu" | "Sigmoid" | "Tanh" | "Identity" | "GlobalAveragePool" | "GlobalMaxPool" => {
                let x = self.tensor(node, 0)?;
                let op = match node.op_type() {
                    "Relu" => Op::Relu,
                    "Sigmoid" => Op::Sigmoid,
                    "Tanh" => Op::Tanh,
                    "Identity" => Op::Identity,
                    "GlobalAveragePool" => Op::GlobalAvgPool,
                    _ => Op::GlobalMaxPool,
                };
                self.warn_unread(node, &[]);
                self.emit(node, op, vec![x], vec![])?;
            }
            "Dropout" => {
                let x = self.tensor(node, 0)?;
                if let Some(t) = self.opt_const(node, 2)? {
                    let on = t
                        .ints()
                        .map(|v| v.first().copied().unwrap_or(0) != 0)
                        .unwrap_or(true);
                    if on {
                        return Err("training_mode = true is not supported".into());
                    }
                }
                self.warn_unread(node, &["ratio", "seed", "is_test"]);
                self.emit(node, Op::Dropout, vec![x], vec![])?;
            }
            "LeakyRelu" => {
                let x = self.tensor(node, 0)?;
                let alpha = a.float("alpha")?.unwrap_or(0.01);
                self.warn_unread(node, &["alpha"]);
                self.emit(node, Op::LeakyRelu { alpha }, vec![x], vec![])?;
            }
            "Elu" => {
                let x = self.tensor(node, 0)?;
                let alpha = a.float("alpha")?.unwrap_or(1.0);
                self.warn_unread(node, &["alpha"]);
                self.emit(node, Op::Elu { alpha }, vec![x], vec![])?;
            }
            "ThresholdedRelu" => {
                let x = self.tensor(node, 0)?;
                let alpha = a.float("alpha")?.unwrap_or(1.0);
                self.warn_unread(node, &["alpha"]);
                self.emit(node, Op::ThresholdedRelu { alpha }, vec![x], vec![])?;
            }
            "Selu" => {
                let x = self.tensor(node, 0)?;
                let alpha = a.float("alpha")?.unwrap_or(1.673_263_2);
                let gamma = a.float("gamma")?.unwrap_or(1.050_701);
                self.warn_unread(node, &["alpha", "gamma"]);
                self.emit(node, Op::Selu { alpha, gamma }, vec![x], vec![])?;
            }
            "Slice" => self.slice(node, &a)?,
            "Clip" => {
                let x = self.tensor(node, 0)?;
                let (mut min, mut max) = (f32::NEG_INFINITY, f32::INFINITY);
                if self.opset < 11 {
                    min = a.float("min")?.unwrap_or(min);
                    max = a.float("max")?.unwrap_or(max);
                } else {
                    if let Some(c) = self.opt_const(node, 1)? {
                        min = scalar(&c.floats()?, "min")?;
                    }
                    if let Some(c) = self.opt_const(node, 2)? {
                        max = scalar(&c.floats()?, "max")?;
                    }
                }
                self.warn_unread(node, &["min", "max"]);
                self.emit(node, Op::Clip { min, max }, vec![x], vec![])?;
            }
            "MaxPool" | "AveragePool" => self.pool(node, &a)?,
            "Flatten" => {
                let x = self.tensor(node, 0)?;
                let axis = self.axis(a.int("axis")?.unwrap_or(1), self.rank(&x))?;
                if axis != 1 {
                    return Err(format!(
                        "axis {axis} is not supported: only axis 1 (keep the batch, flatten the rest) is"
                    ));
                }
                self.warn_unread(node, &["axis"]);
                self.emit(node, Op::Flatten, vec![x], vec![])?;
            }
            "Reshape" => {
                let x = self.tensor(node, 0)?;
                let target = self.req_const(node, 1, "shape")?.ints()?;
                let allowzero = a.int("allowzero")?.unwrap_or(0) != 0;
                let shape = resolve_reshape(self.shape(&x), &target, allowzero)?;
                self.warn_unread(node, &["allowzero"]);
                self.emit(node, Op::Reshape { shape }, vec![x], vec![])?;
            }
            "Transpose" => {
                let x = self.tensor(node, 0)?;
                let rank = self.rank(&x);
                let perm = match a.ints("perm")? {
                    Some(p) => p
                        .iter()
                        .map(|&v| self.axis(v, rank))
                        .collect::<Result<Vec<_>, _>>()?,
                    None => (0..rank).rev().collect(),
                };
                self.warn_unread(node, &["perm"]);
                self.emit(node, Op::Transpose { perm }, vec![x], vec![])?;
            }
            "Squeeze" | "Unsqueeze" => {
                let x = self.tensor(node, 0)?;
                let raw = if self.opset < 13 {
                    a.ints("axes")?
                } else {
                    self.opt_const(node, 1)?.map(|c| c.ints()).transpose()?
                };
                let squeeze = node.op_type() == "Squeeze";
                let shape = self.shape(&x).to_vec();
                let axes: Vec<usize> = match raw {
                    Some(v) => {
                        let rank = if squeeze {
                            shape.len() + 1
                        } else {
                            shape.len() + 1 + v.len()
                        };
                        v.iter()
                            .map(|&ax| self.axis(ax, rank))
                            .collect::<Result<_, _>>()?
                    }
                    None if squeeze => (1..=shape.len()).filter(|&i| shape[i - 1] == 1).collect(),
                    None => return Err("axes are required".into()),
                };
                if axes.contains(&0) {
                    return Err(
                        "squeezing or unsqueezing the batch axis (0) is not supported".into(),
                    );
                }
                self.warn_unread(node, &["axes"]);
                let op = if squeeze {
                    Op::Squeeze { axes }
                } else {
                    Op::Unsqueeze { axes }
                };
                self.emit(node, op, vec![x], vec![])?;
            }
            "BatchNormalization" => {
                let x = self.tensor(node, 0)?;
                if a.int("training_mode")?.unwrap_or(0) != 0 {
                    return Err(
                        "training_mode = 1 is not supported; export the model in eval mode".into(),
                    );
                }
                let epsilon = a.float("epsilon")?.unwrap_or(1e-5);
                let scale = self.req_const(node, 1, "scale")?.floats()?;
                let bias = self.req_const(node, 2, "B")?.floats()?;
                let mean = self.req_const(node, 3, "mean")?.floats()?;
                let var = self.req_const(node, 4, "var")?.floats()?;
                self.warn_unread(node, &["epsilon", "momentum", "spatial", "training_mode"]);
                self.emit(
                    node,
                    Op::BatchNorm { epsilon },
                    vec![x],
                    vec![
                        ("scale", scale),
                        ("bias", bias),
                        ("mean", mean),
                        ("var", var),
                    ],
                )?;
            }
            "Concat" => {
                let inputs = (0..node.input.len())
                    .map(|k| self.tensor(node, k))
                    .collect::<Result<Vec<_>, _>>()?;
                let axis = self.axis(
                    a.int("axis")?.ok_or("attribute 'axis' is required")?,
                    self.rank(&inputs[0]),
                )?;
                if axis == 0 {
                    return Err("concatenation along the batch axis is not supported".into());
                }
                self.warn_unread(node, &["axis"]);
                self.emit(node, Op::Concat { axis }, inputs, vec![])?;
            }
            "Pad" => self.pad(node, &a)?,
            "Softmax" => {
                let x = self.tensor(node, 0)?;
                let rank = self.rank(&x);
                let default = if self.opset < 13 { 1 } else { -1 };
                let axis = self.axis(a.int("axis")?.unwrap_or(default), rank)?;
                if self.opset < 13 {
                    // Before opset 13 Softmax normalises over all axes from `axis` on.
                    let trailing = &self.shape(&x)[axis.max(1) - 1..];
                    let non_unit = trailing.iter().skip(1).filter(|&&d| d != 1).count();
                    if axis == 0 || non_unit > 0 {
                        return Err(format!(
                            "opset {} Softmax over axes {axis}.. of per-sample shape {:?} is not a single-axis softmax",
                            self.opset,
                            self.shape(&x)
                        ));
                    }
                }
                if axis == 0 {
                    return Err("softmax over the batch axis is not supported".into());
                }
                self.warn_unread(node, &["axis"]);
                self.emit(node, Op::Softmax { axis }, vec![x], vec![])?;
            }
            other => return Err(format!("op type {other} is not supported")),
        }
        Ok(())
    }

    fn conv(&mut self, node: &NodeProto, a: &Attrs) -> Result<(), String> {
        let x = self.tensor(node, 0)?;
        let w = self.req_const(node, 1, "W")?.floats()?;
        if w.ndim() != 4 {
            return Err(format!(
                "only 2-D convolutions are supported (weight has shape {:?})",
                w.shape()
            ));
        }
        let kernel = pair(
            a.ints("kernel_shape")?,
            [w.shape()[2], w.shape()[3]],
            "kernel_shape",
        )?;
        let strides = pair(a.ints("strides")?, [1, 1], "strides")?;
        let dilations = pair(a.ints("dilations")?, [1, 1], "dilations")?;
        let groups = a.int("group")?.unwrap_or(1);
        if groups < 1 {
            return Err(format!("group = {groups} must be ≥ 1"));
        }
        let in_hw = spatial(self.shape(&x))?;
        let pads = self.pads(a, in_hw, kernel, strides, dilations)?;
        let mut params = vec![("weight", w)];
        if let Some(b) = self.opt_const(node, 2)? {
            params.push(("bias", b.floats()?));
        }
        self.warn_unread(
            node,
            &[
                "kernel_shape",
                "strides",
                "dilations",
                "group",
                "pads",
                "auto_pad",
            ],
        );
        let op = Op::Conv {
            kernel,
            strides,
            pads,
            dilations,
            groups: groups as usize,
        };
        self.emit(node, op, vec![x], params)?;
        Ok(())
    }

    /// Explicit `[top, left, bottom, right]` pads from `pads` or `auto_pad`.
    fn pads(
        &self,
        a: &Attrs,
        in_hw: [usize; 2],
        kernel: [usize; 2],
        strides: [usize; 2],
        dilations: [usize; 2],
    ) -> Result<[usize; 4], String> {
        let auto = a.string("auto_pad")?.unwrap_or_else(|| "NOTSET".into());
        match auto.as_str() {
            "NOTSET" => match a.ints("pads")? {
                None => Ok([0; 4]),
                Some(p) if p.len() == 4 && p.iter().all(|&v| v >= 0) => {
                    Ok([p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize])
                }
                Some(p) => Err(format!("pads {p:?} must be 4 non-negative values")),
            },
            "VALID" => Ok([0; 4]),
            "SAME_UPPER" | "SAME_LOWER" => {
                let mut out = [0; 4];
                for d in 0..2 {
                    let o = in_hw[d].div_ceil(strides[d]);
                    let span = dilations[d] * (kernel[d] - 1) + 1;
                    let total = ((o - 1) * strides[d] + span).saturating_sub(in_hw[d]);
                    let small = total / 2;
                    let (begin, end) = if auto == "SAME_UPPER" {
                        (small, total - small)
                    } else {
                        (total - small, small)
                    };
                    out[d] = begin;
                    out[d + 2] = end;
                }
                Ok(out)
            }
            other => Err(format!(
                "auto_pad '{other}' is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID"
            )),
        }
    }

    fn pool(&mut self, node: &NodeProto, a: &Attrs) -> Result<(), String> {
        let x = self.tensor(node, 0)?;
        let kernel = pair(a.ints("kernel_shape")?, [0, 0], "kernel_shape")?;
        if kernel.contains(&0) {
            return Err("attribute 'kernel_shape' (2 values) is required".into());
        }
        let strides = pair(a.ints("strides")?, [1, 1], "strides")?;
        let dilations = pair(a.ints("dilations")?, [1, 1], "dilations")?;
        let ceil_mode = a.int("ceil_mode")?.unwrap_or(0) != 0;
        let in_hw = spatial(self.shape(&x))?;
        let pads = self.pads(a, in_hw, kernel, strides, dilations)?;
        let op = if node.op_type() == "MaxPool" {
            if a.int("storage_order")?.unwrap_or(0) != 0 {
                self.warnings.push(format!(
                    "node '{}': storage_order only affects the unused indices output",
                    node_label(node)
                ));
            }
            self.warn_unread(
                node,
                &[
                    "kernel_shape",
                    "strides",
                    "dilations",
                    "ceil_mode",
                    "pads",
                    "auto_pad",
                    "storage_order",
                ],
            );
            Op::MaxPool {
                kernel,
                strides,
                pads,
                dilations,
                ceil_mode,
            }
        } else {
            if dilations != [1, 1] {
                return Err(format!(
                    "dilations {dilations:?} are not supported for AveragePool"
                ));
            }
            self.warn_unread(
                node,
                &[
                    "kernel_shape",
                    "strides",
                    "dilations",
                    "ceil_mode",
                    "pads",
                    "auto_pad",
                    "count_include_pad",
                ],
            );
            Op::AvgPool {
                kernel,
                strides,
                pads,
                count_include_pad: a.int("count_include_pad")?.unwrap_or(0) != 0,
                ceil_mode,
            }
        };
        self.emit(node, op, vec![x], vec![])?;
        Ok(())
    }

    fn gemm(&mut self, node: &NodeProto, a: &Attrs) -> Result<(), String> {
        let x = self.tensor(node, 0)?;
        if a.int("transA")?.unwrap_or(0) != 0 {
            return Err(
                "transA = 1 is not supported (the batch must be the first axis of A)".into(),
            );
        }
        let trans_b = a.int("transB")?.unwrap_or(0) != 0;
        let alpha = a.float("alpha")?.unwrap_or(1.0);
        let beta = a.float("beta")?.unwrap_or(1.0);
        let b = self.req_const(node, 1, "B")?.floats()?;
        if b.ndim() != 2 {
            return Err(format!("B must be 2-D, got shape {:?}", b.shape()));
        }
        let b = b.into_dimensionality::<ndarray::Ix2>().expect("2-D");
        let w: Array2<f32> = if trans_b { b } else { b.t().to_owned() };
        let w = (w * alpha).into_dyn();
        let out = w.shape()[0];
        let mut params = vec![("weight", w)];
        if let Some(c) = self.opt_const(node, 2)? {
            let c = c.floats()?;
            let bias = broadcast_bias(&c, out).ok_or_else(|| {
                format!(
                    "C has shape {:?}; only a bias broadcastable to [{out}] is supported",
                    c.shape()
                )
            })?;
            params.push(("bias", bias * beta));
        }
        self.warn_unread(node, &["transA", "transB", "alpha", "beta"]);
        self.emit(node, Op::Dense, vec![x], params)?;
        Ok(())
    }

    fn add(&mut self, node: &NodeProto) -> Result<(), String> {
        if node.input.len() != 2 {
            return Err(format!("takes 2 inputs, got {}", node.input.len()));
        }
        let (v0, v1) = (
            self.value(&node.input[0])?.clone(),
            self.value(&node.input[1])?.clone(),
        );
        match (v0, v1) {
            (Value::Tensor(p), Value::Tensor(q)) => {
                self.emit(node, Op::Add, vec![p, q], vec![])?;
            }
            (Value::Tensor(t), Value::Const(c)) | (Value::Const(c), Value::Tensor(t)) => {
                // A constant addend is folded into the bias of the Dense/Conv producing `t`,
                // provided nothing else reads that producer's output.
                let producer = self.node_of.get(&t).copied();
                let onnx_src = node
                    .input
                    .iter()
                    .find(|i| matches!(self.values.get(*i), Some(Value::Tensor(_))))
                    .expect("one input is a tensor")
                    .clone();
                let single_use = self.uses.get(&onnx_src).copied().unwrap_or(0) == 1
                    && !self.graph_outputs.contains(&onnx_src);
                let Some(pi) = producer.filter(|&i| {
                    single_use && matches!(self.nodes[i].op, Op::Dense | Op::Conv { .. })
                }) else {
                    return Err(
                        "adding a constant is supported only as the bias of the MatMul/Gemm/Conv whose output it reads (and nothing else reads)"
                            .into(),
                    );
                };
                let out = self.shape(&t)[0];
                let c = c.floats()?;
                let is_conv = matches!(self.nodes[pi].op, Op::Conv { .. });
                let bias = if is_conv {
                    conv_bias(&c, out)
                } else {
                    broadcast_bias(&c, out)
                }
                .ok_or_else(|| {
                    format!(
                        "constant of shape {:?} is not a per-{} bias of size {out}",
                        c.shape(),
                        if is_conv { "channel" } else { "unit" }
                    )
                })?;
                let key = format!("{}.bias", self.nodes[pi].name);
                let total = match self.weights.get(&key) {
                    Some(old) => &old + &bias,
                    None => bias,
                };
                self.weights.insert(key.clone(), total);
                self.nodes[pi].params.insert("bias".into(), key);
                self.bind(node, 0, Value::Tensor(t))?;
            }
            (Value::Const(_), Value::Const(_)) => {
                return Err(
                    "adding two constants is not supported (fold them when exporting)".into(),
                );
            }
        }
        Ok(())
    }

    fn pad(&mut self, node: &NodeProto, a: &Attrs) -> Result<(), String> {
        let x = self.tensor(node, 0)?;
        let rank = self.rank(&x);
        let mode = a.string("mode")?.unwrap_or_else(|| "constant".into());
        if mode != "constant" {
            return Err(format!(
                "mode '{mode}' is not supported (only constant zero padding)"
            ));
        }
        let (raw, value) = if self.opset < 11 {
            (
                a.ints("pads")?.ok_or("attribute 'pads' is required")?,
                a.float("value")?.unwrap_or(0.0),
            )
        } else {
            let p = self.req_const(node, 1, "pads")?.ints()?;
            let v = match self.opt_const(node, 2)? {
                Some(c) => scalar(&c.floats()?, "constant_value")?,
                None => 0.0,
            };
            (p, v)
        };
        if value != 0.0 {
            return Err(format!("constant value {value} is not supported (only 0)"));
        }
        let axes: Vec<usize> = match self.opt_const(node, 3)? {
            Some(c) => c
                .ints()?
                .iter()
                .map(|&v| self.axis(v, rank))
                .collect::<Result<_, _>>()?,
            None => (0..rank).collect(),
        };
        if raw.len() != 2 * axes.len() || raw.iter().any(|&v| v < 0) {
            return Err(format!(
                "pads {raw:?} must be {} non-negative values (negative pads are not supported)",
                2 * axes.len()
            ));
        }
        let mut pads = vec![0usize; 2 * rank];
        for (k, &ax) in axes.iter().enumerate() {
            pads[ax] = raw[k] as usize;
            pads[rank + ax] = raw[axes.len() + k] as usize;
        }
        self.warn_unread(node, &["mode", "pads", "value"]);
        self.emit(node, Op::Pad { pads }, vec![x], vec![])?;
        Ok(())
    }

    /// `Slice` with constant bounds and unit steps, as a [`Op::Crop`].
    fn slice(&mut self, node: &NodeProto, a: &Attrs) -> Result<(), String> {
        let x = self.tensor(node, 0)?;
        let rank = self.rank(&x);
        let (starts, ends, axes, steps) = if self.opset < 10 {
            (
                a.ints("starts")?.ok_or("attribute 'starts' is required")?,
                a.ints("ends")?.ok_or("attribute 'ends' is required")?,
                a.ints("axes")?,
                None,
            )
        } else {
            let ints = |c: Option<Const>| c.map(|c| c.ints()).transpose();
            (
                self.req_const(node, 1, "starts")?.ints()?,
                self.req_const(node, 2, "ends")?.ints()?,
                ints(self.opt_const(node, 3)?)?,
                ints(self.opt_const(node, 4)?)?,
            )
        };
        let axes: Vec<usize> = match axes {
            Some(v) => v
                .iter()
                .map(|&v| self.axis(v, rank))
                .collect::<Result<_, _>>()?,
            None => (0..starts.len()).collect(),
        };
        if starts.len() != axes.len() || ends.len() != axes.len() {
            return Err(format!(
                "starts {starts:?}, ends {ends:?} and axes {axes:?} differ in length"
            ));
        }
        if let Some(st) = steps
            .as_ref()
            .filter(|st| st.len() != axes.len() || st.iter().any(|&v| v != 1))
        {
            return Err(format!("steps {st:?} are not supported (only steps of 1)"));
        }
        let dims: Vec<usize> = std::iter::once(0)
            .chain(self.shape(&x).iter().copied())
            .collect();
        let mut crops = vec![0usize; 2 * rank];
        for (k, &ax) in axes.iter().enumerate() {
            if ax == 0 {
                return Err("slicing the batch axis is not supported".into());
            }
            let d = dims[ax] as i64;
            let clamp = |v: i64| if v < 0 { (v + d).max(0) } else { v.min(d) };
            let (b, e) = (clamp(starts[k]), clamp(ends[k]));
            if e <= b {
                return Err(format!(
                    "the slice [{}, {}) of axis {ax} (size {d}) is empty",
                    starts[k], ends[k]
                ));
            }
            crops[ax] = b as usize;
            crops[rank + ax] = (d - e) as usize;
        }
        self.warn_unread(node, &["starts", "ends", "axes"]);
        self.emit(node, Op::Crop { crops }, vec![x], vec![])?;
        Ok(())
    }

    fn finish(self, graph: &proto::GraphProto, name: &str) -> Result<Imported, ImportError> {
        let path = self.path;
        let out = match graph.output.as_slice() {
            [one] => one.name().to_string(),
            [] => return Err(err(path, None, "the graph has no output")),
            many => {
                return Err(err(
                    path,
                    None,
                    format!(
                        "the graph has {} outputs; only single-output classifiers are supported",
                        many.len()
                    ),
                ));
            }
        };
        let output = match self.values.get(&out) {
            Some(Value::Tensor(t)) if *t != self.input_name => t.clone(),
            _ => {
                return Err(err(
                    path,
                    None,
                    format!("the output '{out}' is not computed by any supported node"),
                ));
            }
        };
        Converted {
            name: name.to_string(),
            input: (self.input_name, self.input_shape),
            image_layout: Layout::NCHW,
            output,
            nodes: self.nodes,
            weights: self.weights,
            warnings: self.warnings,
        }
        .finish(path)
    }
}

/// Attribute lookup by name.
struct Attrs<'a>(&'a [AttributeProto]);

impl Attrs<'_> {
    fn get(&self, name: &str) -> Option<&AttributeProto> {
        self.0.iter().find(|a| a.name() == name)
    }
    fn int(&self, name: &str) -> Result<Option<i64>, String> {
        match self.get(name) {
            None => Ok(None),
            Some(a)
                if a.r#type == Some(attr_type::INT) || (a.r#type.is_none() && a.i.is_some()) =>
            {
                Ok(a.i.or(Some(0)))
            }
            Some(_) => Err(format!("attribute '{name}' must be an integer")),
        }
    }
    fn float(&self, name: &str) -> Result<Option<f32>, String> {
        match self.get(name) {
            None => Ok(None),
            Some(a)
                if a.r#type == Some(attr_type::FLOAT) || (a.r#type.is_none() && a.f.is_some()) =>
            {
                Ok(a.f.or(Some(0.0)))
            }
            Some(_) => Err(format!("attribute '{name}' must be a float")),
        }
    }
    fn ints(&self, name: &str) -> Result<Option<Vec<i64>>, String> {
        match self.get(name) {
            None => Ok(None),
            Some(a) if a.r#type == Some(attr_type::INTS) || a.r#type.is_none() => {
                Ok(Some(a.ints.clone()))
            }
            Some(_) => Err(format!("attribute '{name}' must be a list of integers")),
        }
    }
    fn string(&self, name: &str) -> Result<Option<String>, String> {
        match self.get(name) {
            None => Ok(None),
            Some(a)
                if a.r#type == Some(attr_type::STRING) || (a.r#type.is_none() && a.s.is_some()) =>
            {
                Ok(Some(String::from_utf8_lossy(a.s()).into_owned()))
            }
            Some(_) => Err(format!("attribute '{name}' must be a string")),
        }
    }
}

fn pair(v: Option<Vec<i64>>, default: [usize; 2], name: &str) -> Result<[usize; 2], String> {
    match v {
        None => Ok(default),
        Some(v) if v.len() == 2 && v.iter().all(|&x| x > 0) => Ok([v[0] as usize, v[1] as usize]),
        Some(v) => Err(format!(
            "{name} {v:?} must be 2 positive values (only 2-D windows are supported)"
        )),
    }
}

fn spatial(shape: &[usize]) -> Result<[usize; 2], String> {
    match shape {
        [_, h, w] => Ok([*h, *w]),
        _ => Err(format!(
            "needs an NCHW input, got per-sample shape {shape:?}"
        )),
    }
}

fn scalar(a: &ArrayD<f32>, what: &str) -> Result<f32, String> {
    if a.len() == 1 {
        Ok(a.iter().copied().next().expect("one value"))
    } else {
        Err(format!(
            "{what} must be a scalar, got shape {:?}",
            a.shape()
        ))
    }
}

/// A bias of shape `[]`, `[1]`, `[out]` or `[1, out]` as `[out]`.
fn broadcast_bias(c: &ArrayD<f32>, out: usize) -> Option<ArrayD<f32>> {
    let shape = c.shape();
    let flat: Vec<f32> = c.iter().copied().collect();
    let ok_full = shape.iter().filter(|&&d| d != 1).count() <= 1
        && flat.len() == out
        && shape.last() == Some(&out);
    if ok_full {
        return ArrayD::from_shape_vec(IxDyn(&[out]), flat).ok();
    }
    if flat.len() == 1 && shape.len() <= 2 {
        return Some(ArrayD::from_elem(IxDyn(&[out]), flat[0]));
    }
    None
}

/// A per-channel addend of a convolution output (`[C,1,1]`, `[1,C,1,1]`, or a scalar) as `[C]`.
fn conv_bias(c: &ArrayD<f32>, out: usize) -> Option<ArrayD<f32>> {
    let shape = c.shape();
    let flat: Vec<f32> = c.iter().copied().collect();
    if flat.len() == 1 && shape.len() <= 4 {
        return Some(ArrayD::from_elem(IxDyn(&[out]), flat[0]));
    }
    let per_channel = match shape {
        [c, 1, 1] | [1, c, 1, 1] => *c == out,
        _ => false,
    };
    per_channel.then(|| ArrayD::from_shape_vec(IxDyn(&[out]), flat).expect("C values"))
}

/// Resolves an ONNX Reshape target (which includes the batch axis) to a per-sample shape.
/// The first entry stands for the batch whatever its value; `0` copies an input dimension
/// (unless `allowzero`) and one `-1` is inferred.
fn resolve_reshape(input: &[usize], target: &[i64], allowzero: bool) -> Result<Vec<usize>, String> {
    if target.is_empty() {
        return Err("the target shape is empty (the batch axis must stay first)".into());
    }
    if target[0] == -1 && target[1..].contains(&-1) {
        return Err(format!("target shape {target:?} has more than one -1"));
    }
    let total: usize = input.iter().product();
    let mut out = Vec::with_capacity(target.len() - 1);
    let mut infer = None;
    for (i, &t) in target.iter().enumerate().skip(1) {
        match t {
            -1 if infer.is_none() => {
                infer = Some(i - 1);
                out.push(1);
            }
            -1 => return Err(format!("target shape {target:?} has more than one -1")),
            0 if !allowzero => {
                let d = input.get(i - 1).ok_or_else(|| {
                    format!("target {target:?}: 0 at axis {i} copies a missing axis")
                })?;
                out.push(*d);
            }
            t if t > 0 => out.push(t as usize),
            t => return Err(format!("target shape {target:?} has an invalid entry {t}")),
        }
    }
    let known: usize = out.iter().product();
    if let Some(k) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(format!(
                "cannot reshape per-sample shape {input:?} to {target:?}"
            ));
        }
        out[k] = total / known;
    } else if target[0] == -1 && known != total {
        return Err(format!(
            "cannot reshape per-sample shape {input:?} to {target:?} with the batch kept"
        ));
    }
    if out.iter().product::<usize>() != total {
        return Err(format!(
            "target shape {target:?} changes the batch size (per-sample shape {input:?}); only reshapes that keep the batch axis are supported"
        ));
    }
    Ok(out)
}

/// Per-sample dims of a graph input: dim 0 is the batch (any value), the rest must be fixed.
fn input_dims(v: &proto::ValueInfoProto) -> Result<Vec<usize>, String> {
    use proto::tensor_shape_proto::dimension::Value as D;
    use proto::type_proto::Value as T;
    let tensor = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(T::TensorType(t)) => t,
        _ => return Err("is not a tensor".into()),
    };
    if tensor.elem_type != Some(dtype::FLOAT) {
        return Err(format!(
            "has element type {} ; only float32 inputs are supported",
            dtype_name(tensor.elem_type.unwrap_or(0))
        ));
    }
    let dims = &tensor.shape.as_ref().ok_or("has no shape")?.dim;
    if dims.len() < 2 {
        return Err(format!(
            "has rank {}; expected a batch axis and at least one more",
            dims.len()
        ));
    }
    dims[1..]
        .iter()
        .enumerate()
        .map(|(i, d)| match &d.value {
            Some(D::DimValue(v)) if *v > 0 => Ok(*v as usize),
            _ => Err(format!(
                "axis {} has no fixed size; every axis but the batch must be fixed",
                i + 1
            )),
        })
        .collect()
}

fn dtype_name(t: i32) -> String {
    match t {
        dtype::FLOAT => "float32".into(),
        dtype::DOUBLE => "float64".into(),
        dtype::FLOAT16 => "float16".into(),
        dtype::INT64 => "int64".into(),
        dtype::INT32 => "int32".into(),
        other => format!("code {other}"),
    }
}

fn constant_value(node: &NodeProto) -> Result<Const, String> {
    let a = node.attribute.first().ok_or("has no value attribute")?;
    match a.name() {
        "value" => tensor_const(a.t.as_ref().ok_or("attribute 'value' holds no tensor")?),
        "value_float" => Ok(Const::F32(ArrayD::from_elem(IxDyn(&[]), a.f()))),
        "value_floats" => Ok(Const::F32(
            ArrayD::from_shape_vec(IxDyn(&[a.floats.len()]), a.floats.clone()).expect("1-D"),
        )),
        "value_int" => Ok(Const::I64(vec![], vec![a.i()])),
        "value_ints" => Ok(Const::I64(vec![a.ints.len()], a.ints.clone())),
        other => Err(format!("Constant attribute '{other}' is not supported")),
    }
}

/// Decodes an initializer or constant tensor (raw_data or typed fields).
fn tensor_const(t: &TensorProto) -> Result<Const, String> {
    if t.data_location == Some(1) || !t.external_data.is_empty() {
        return Err(
            "its data is stored outside the model file (external data), which is not supported; \
             save the model with onnx.save_model(model, path, save_as_external_data=False)"
                .into(),
        );
    }
    if t.segment.is_some() {
        return Err("segmented tensors are not supported".into());
    }
    let shape: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension {d}")))
        .collect::<Result<_, _>>()?;
    let n: usize = shape.iter().product();
    let raw = t.raw_data.as_deref();
    let check = |len: usize| {
        if len == n {
            Ok(())
        } else {
            Err(format!(
                "holds {len} values, but its shape {shape:?} needs {n}"
            ))
        }
    };
    let dt = t.data_type.unwrap_or(0);
    match dt {
        dtype::FLOAT | dtype::DOUBLE | dtype::FLOAT16 => {
            let v: Vec<f32> = match (dt, raw) {
                (dtype::FLOAT, Some(r)) => r
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                (dtype::FLOAT, None) => t.float_data.clone(),
                (dtype::DOUBLE, Some(r)) => r
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                    .collect(),
                (dtype::DOUBLE, None) => t.double_data.iter().map(|&x| x as f32).collect(),
                _ => {
                    return Err(
                        "float16 tensors are not supported; convert the model to float32".into(),
                    );
                }
            };
            check(v.len())?;
            Ok(Const::F32(
                ArrayD::from_shape_vec(IxDyn(&shape), v).map_err(|e| e.to_string())?,
            ))
        }
        dtype::INT64 | dtype::INT32 => {
            let v: Vec<i64> = match (dt, raw) {
                (dtype::INT64, Some(r)) => r
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
                (dtype::INT64, None) => t.int64_data.clone(),
                (_, Some(r)) => r
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                    .collect(),
                (_, None) => t.int32_data.iter().map(|&x| x as i64).collect(),
            };
            check(v.len())?;
            Ok(Const::I64(shape, v))
        }
        other => Err(format!(
            "element type {} is not supported",
            dtype_name(other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_targets() {
        assert_eq!(
            resolve_reshape(&[16, 5, 5], &[-1, 400], false).unwrap(),
            vec![400]
        );
        assert_eq!(
            resolve_reshape(&[16, 5, 5], &[0, -1], false).unwrap(),
            vec![400]
        );
        assert_eq!(
            resolve_reshape(&[16, 5, 5], &[1, -1], false).unwrap(),
            vec![400]
        );
        assert_eq!(
            resolve_reshape(&[16, 5, 5], &[0, 0, 25], false).unwrap(),
            vec![16, 25]
        );
        assert!(resolve_reshape(&[16, 5, 5], &[-1, -1], false).is_err());
        assert!(resolve_reshape(&[16, 5, 5], &[-1, 16, 5], false).is_err());
        assert!(resolve_reshape(&[16, 5, 5], &[2, 200], false).is_err());
    }

    #[test]
    fn biases() {
        let c = ArrayD::from_shape_vec(IxDyn(&[1, 3]), vec![1., 2., 3.]).unwrap();
        assert_eq!(
            broadcast_bias(&c, 3).unwrap().as_slice().unwrap(),
            &[1., 2., 3.]
        );
        assert!(broadcast_bias(&c, 4).is_none());
        let s = ArrayD::from_elem(IxDyn(&[]), 2.0);
        assert_eq!(
            broadcast_bias(&s, 2).unwrap().as_slice().unwrap(),
            &[2., 2.]
        );
        let cb = ArrayD::from_shape_vec(IxDyn(&[1, 2, 1, 1]), vec![1., 2.]).unwrap();
        assert_eq!(conv_bias(&cb, 2).unwrap().as_slice().unwrap(), &[1., 2.]);
    }
}
