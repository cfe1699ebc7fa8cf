//! [`OnnxBuilder`]: a small fluent builder of ONNX models, and its attribute helper [`Attr`].

use std::collections::{HashMap, HashSet};
use std::path::Path;

use lrp_onnx::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto, tensor_shape_proto, type_proto,
};
use lrp_onnx::{attr_type, dtype};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The seed of [`OnnxBuilder::new`]; [`OnnxBuilder::with_seed`] picks another.
pub const DEFAULT_SEED: u64 = 0x4c52_5000;

/// The name of a symbolic batch dimension (a `None` at axis 0 of [`OnnxBuilder::input`]).
pub const BATCH_DIM: &str = "N";

/// The epsilon of the `BatchNormalization` nodes that [`OnnxBuilder::batchnorm`] adds
/// (PyTorch's default).
pub const BN_EPSILON: f32 = 1e-5;

/// The lowest `ir_version` that the ONNX release introducing `opset` wrote; ONNX Runtime 1.31
/// accepts opsets up to 26 with it. Opsets up to 18 get IR 8.
pub fn ir_version_for_opset(opset: i64) -> i64 {
    match opset {
        ..=18 => 8,
        19..=20 => 9,
        21..=22 => 10,
        23 => 11,
        24 => 12,
        _ => 13,
    }
}

/// One node attribute; build it with [`Attr::int`], [`Attr::ints`], [`Attr::float`], … and
/// pass it to [`OnnxBuilder::node`].
#[derive(Debug, Clone, PartialEq)]
pub struct Attr(pub AttributeProto);

impl Attr {
    fn base(name: &str, ty: i32) -> AttributeProto {
        AttributeProto {
            name: Some(name.to_owned()),
            r#type: Some(ty),
            ..Default::default()
        }
    }

    /// An `INT` attribute.
    pub fn int(name: &str, value: i64) -> Self {
        Self(AttributeProto {
            i: Some(value),
            ..Self::base(name, attr_type::INT)
        })
    }

    /// An `INTS` attribute.
    pub fn ints(name: &str, values: &[i64]) -> Self {
        Self(AttributeProto {
            ints: values.to_vec(),
            ..Self::base(name, attr_type::INTS)
        })
    }

    /// A `FLOAT` attribute.
    pub fn float(name: &str, value: f32) -> Self {
        Self(AttributeProto {
            f: Some(value),
            ..Self::base(name, attr_type::FLOAT)
        })
    }

    /// A `FLOATS` attribute.
    pub fn floats(name: &str, values: &[f32]) -> Self {
        Self(AttributeProto {
            floats: values.to_vec(),
            ..Self::base(name, attr_type::FLOATS)
        })
    }

    /// A `STRING` attribute (UTF-8 bytes).
    pub fn string(name: &str, value: &str) -> Self {
        Self(AttributeProto {
            s: Some(value.as_bytes().to_vec()),
            ..Self::base(name, attr_type::STRING)
        })
    }

    /// A `TENSOR` attribute (e.g. `Constant`'s `value`; see [`tensor_f32`], [`tensor_i64`]).
    pub fn tensor(name: &str, value: TensorProto) -> Self {
        Self(AttributeProto {
            t: Some(value),
            ..Self::base(name, attr_type::TENSOR)
        })
    }

    /// The attribute's protobuf message.
    pub fn into_proto(self) -> AttributeProto {
        self.0
    }
}

impl From<Attr> for AttributeProto {
    fn from(a: Attr) -> Self {
        a.0
    }
}

fn dims_i64(dims: &[usize]) -> Vec<i64> {
    dims.iter()
        .map(|&d| i64::try_from(d).expect("dimension fits i64"))
        .collect()
}

fn numel(dims: &[usize]) -> usize {
    dims.iter().product()
}

/// A named `FLOAT` tensor with its data in `raw_data` (little-endian f32).
///
/// Panics if `data.len()` is not the product of `dims`.
pub fn tensor_f32(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    assert_eq!(
        data.len(),
        numel(dims),
        "tensor {name}: {} values for shape {dims:?}",
        data.len()
    );
    let mut raw = Vec::with_capacity(data.len() * 4);
    for v in data {
        raw.extend_from_slice(&v.to_le_bytes());
    }
    TensorProto {
        name: Some(name.to_owned()),
        dims: dims_i64(dims),
        data_type: Some(dtype::FLOAT),
        raw_data: Some(raw),
        ..Default::default()
    }
}

/// A named `FLOAT` tensor with its data in the typed `float_data` field.
///
/// Panics if `data.len()` is not the product of `dims`.
pub fn tensor_f32_typed(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    assert_eq!(
        data.len(),
        numel(dims),
        "tensor {name}: {} values for shape {dims:?}",
        data.len()
    );
    TensorProto {
        name: Some(name.to_owned()),
        dims: dims_i64(dims),
        data_type: Some(dtype::FLOAT),
        float_data: data.to_vec(),
        ..Default::default()
    }
}

/// A named `INT64` tensor with its data in `raw_data` (little-endian i64).
///
/// Panics if `data.len()` is not the product of `dims`.
pub fn tensor_i64(name: &str, dims: &[usize], data: &[i64]) -> TensorProto {
    assert_eq!(
        data.len(),
        numel(dims),
        "tensor {name}: {} values for shape {dims:?}",
        data.len()
    );
    let mut raw = Vec::with_capacity(data.len() * 8);
    for v in data {
        raw.extend_from_slice(&v.to_le_bytes());
    }
    TensorProto {
        name: Some(name.to_owned()),
        dims: dims_i64(dims),
        data_type: Some(dtype::INT64),
        raw_data: Some(raw),
        ..Default::default()
    }
}

/// A named `INT64` tensor with its data in the typed `int64_data` field.
///
/// Panics if `data.len()` is not the product of `dims`.
pub fn tensor_i64_typed(name: &str, dims: &[usize], data: &[i64]) -> TensorProto {
    assert_eq!(
        data.len(),
        numel(dims),
        "tensor {name}: {} values for shape {dims:?}",
        data.len()
    );
    TensorProto {
        name: Some(name.to_owned()),
        dims: dims_i64(dims),
        data_type: Some(dtype::INT64),
        int64_data: data.to_vec(),
        ..Default::default()
    }
}

/// A `FLOAT` tensor type; `None` dimensions are symbolic (`"N"` at axis 0, `"{name}_d{axis}"`
/// elsewhere); `shape: None` leaves the shape unknown.
fn float_value_info(name: &str, shape: Option<&[Option<usize>]>) -> ValueInfoProto {
    let shape = shape.map(|dims| TensorShapeProto {
        dim: dims
            .iter()
            .enumerate()
            .map(|(axis, d)| tensor_shape_proto::Dimension {
                value: Some(match d {
                    Some(v) => tensor_shape_proto::dimension::Value::DimValue(
                        i64::try_from(*v).expect("dimension fits i64"),
                    ),
                    None if axis == 0 => {
                        tensor_shape_proto::dimension::Value::DimParam(BATCH_DIM.to_owned())
                    }
                    None => {
                        tensor_shape_proto::dimension::Value::DimParam(format!("{name}_d{axis}"))
                    }
                }),
                ..Default::default()
            })
            .collect(),
    });
    ValueInfoProto {
        name: Some(name.to_owned()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(dtype::FLOAT),
                shape,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Number of initializer elements a builder added, by kind.
///
/// `trainable` follows PyTorch's `sum(p.numel() for p in model.parameters())`: weights, biases,
/// and BatchNorm's scale (gamma) and bias (beta). `buffers` are BatchNorm's running mean and
/// variance (PyTorch buffers, not parameters, but ONNX initializers all the same). `constants`
/// are non-float initializers (e.g. `Reshape` shapes from [`OnnxBuilder::initializer_i64`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParamCount {
    /// Weight, bias and BatchNorm gamma/beta elements (torchvision's parameter count).
    pub trainable: u64,
    /// BatchNorm running mean/variance elements.
    pub buffers: u64,
    /// Elements of non-float initializers.
    pub constants: u64,
    /// Number of initializer tensors.
    pub tensors: u64,
}

impl ParamCount {
    /// All initializer elements: `trainable + buffers + constants`.
    pub fn total_elements(&self) -> u64 {
        self.trainable + self.buffers + self.constants
    }
}

#[derive(Clone, Copy)]
enum ParamKind {
    Trainable,
    Buffer,
    Constant,
}

/// Fluent builder of an ONNX model (default domain only, `FLOAT` inputs and outputs).
///
/// Methods take and return `&mut Self`, so calls chain; the layer helpers ([`conv`](Self::conv),
/// [`gemm`](Self::gemm), …) return their output's name instead. Random weights come from one
/// `ChaCha8Rng` seeded by [`with_seed`](Self::with_seed) and drawn in call order, so the same
/// calls with the same seed give byte-identical models.
///
/// A builder made by [`dry_run`](Self::dry_run) generates no weights and stores no initializers;
/// it only counts them (see [`param_count`](Self::param_count)); its model does not run.
#[derive(Debug, Clone)]
pub struct OnnxBuilder {
    name: String,
    opset: i64,
    ir_version: i64,
    rng: ChaCha8Rng,
    dry_run: bool,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    used_names: HashSet<String>,
    next_name: Option<String>,
    counters: HashMap<String, usize>,
    count: ParamCount,
}

impl OnnxBuilder {
    /// A builder of graph `name` importing the default-domain `opset`; `ir_version` follows
    /// from the opset ([`ir_version_for_opset`]); seed [`DEFAULT_SEED`].
    pub fn new(name: &str, opset: i64) -> Self {
        Self {
            name: name.to_owned(),
            opset,
            ir_version: ir_version_for_opset(opset),
            rng: ChaCha8Rng::seed_from_u64(DEFAULT_SEED),
            dry_run: false,
            inputs: Vec::new(),
            outputs: Vec::new(),
            nodes: Vec::new(),
            initializers: Vec::new(),
            used_names: HashSet::new(),
            next_name: None,
            counters: HashMap::new(),
            count: ParamCount::default(),
        }
    }

    /// A builder that only counts initializer elements: no random weights are drawn and no
    /// initializers are stored (explicit initializer data is dropped after counting).
    pub fn dry_run(name: &str, opset: i64) -> Self {
        Self {
            dry_run: true,
            ..Self::new(name, opset)
        }
    }

    /// Reseeds the weight generator (call before adding layers).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = ChaCha8Rng::seed_from_u64(seed);
        self
    }

    /// Overrides the model's `ir_version`.
    pub fn ir_version(&mut self, ir_version: i64) -> &mut Self {
        self.ir_version = ir_version;
        self
    }

    /// Whether this builder was made by [`dry_run`](Self::dry_run).
    pub fn is_dry_run(&self) -> bool {
        self.dry_run
    }

    /// Initializer elements added so far.
    pub fn param_count(&self) -> ParamCount {
        self.count
    }

    /// The builder's random generator (for test data drawn from the same seed).
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }

    /// Names the next node that [`node`](Self::node) or a layer helper adds; a layer helper
    /// also uses it as its output's name and as the prefix of its weights (`{name}.weight`,
    /// `{name}.bias`, `{name}.running_mean`, …), like a PyTorch export.
    pub fn named(&mut self, name: &str) -> &mut Self {
        self.next_name = Some(name.to_owned());
        self
    }

    fn claim(&mut self, name: &str) {
        self.used_names.insert(name.to_owned());
    }

    /// A fresh name `{prefix}_{n}` not used yet.
    fn fresh(&mut self, prefix: &str) -> String {
        let counter = self.counters.entry(prefix.to_owned()).or_default();
        loop {
            let candidate = format!("{prefix}_{counter}");
            *counter += 1;
            if !self.used_names.contains(&candidate) {
                return candidate;
            }
        }
    }

    /// The name of the next layer: the one given by [`named`](Self::named), or a fresh one.
    fn layer_name(&mut self, prefix: &str) -> String {
        match self.next_name.take() {
            Some(n) => n,
            None => self.fresh(prefix),
        }
    }

    /// Adds a `FLOAT` graph input; `None` dimensions are symbolic (`"N"` at axis 0).
    pub fn input(&mut self, name: &str, shape: &[Option<usize>]) -> &mut Self {
        self.claim(name);
        self.inputs.push(float_value_info(name, Some(shape)));
        self
    }

    /// Adds a `FLOAT` graph output of unknown shape (no `shape` field: ONNX Runtime accepts it,
    /// `onnx.checker` does not; use [`output_shaped`](Self::output_shaped) for checker-valid
    /// models).
    pub fn output(&mut self, name: &str) -> &mut Self {
        self.outputs.push(float_value_info(name, None));
        self
    }

    /// Adds a `FLOAT` graph output of the given shape (`None` dimensions symbolic).
    pub fn output_shaped(&mut self, name: &str, shape: &[Option<usize>]) -> &mut Self {
        self.outputs.push(float_value_info(name, Some(shape)));
        self
    }

    fn push_initializer(
        &mut self,
        tensor: impl FnOnce() -> TensorProto,
        dims: &[usize],
        kind: ParamKind,
    ) {
        let n = numel(dims) as u64;
        match kind {
            ParamKind::Trainable => self.count.trainable += n,
            ParamKind::Buffer => self.count.buffers += n,
            ParamKind::Constant => self.count.constants += n,
        }
        self.count.tensors += 1;
        if !self.dry_run {
            let t = tensor();
            if let Some(name) = &t.name {
                self.used_names.insert(name.clone());
            }
            self.initializers.push(t);
        }
    }

    /// Adds a `FLOAT` initializer, data in `raw_data` (little-endian f32); counted as trainable.
    pub fn initializer(&mut self, name: &str, dims: &[usize], data: Vec<f32>) -> &mut Self {
        self.push_initializer(|| tensor_f32(name, dims, &data), dims, ParamKind::Trainable);
        self
    }

    /// Adds a `FLOAT` initializer, data in the typed `float_data` field; counted as trainable.
    pub fn initializer_typed_f32(
        &mut self,
        name: &str,
        dims: &[usize],
        data: Vec<f32>,
    ) -> &mut Self {
        self.push_initializer(
            || tensor_f32_typed(name, dims, &data),
            dims,
            ParamKind::Trainable,
        );
        self
    }

    /// Adds an `INT64` initializer, data in `raw_data` (little-endian i64); counted as a constant.
    pub fn initializer_i64(&mut self, name: &str, dims: &[usize], data: Vec<i64>) -> &mut Self {
        self.push_initializer(|| tensor_i64(name, dims, &data), dims, ParamKind::Constant);
        self
    }

    /// Adds an `INT64` initializer, data in the typed `int64_data` field; counted as a constant.
    pub fn initializer_typed_i64(
        &mut self,
        name: &str,
        dims: &[usize],
        data: Vec<i64>,
    ) -> &mut Self {
        self.push_initializer(
            || tensor_i64_typed(name, dims, &data),
            dims,
            ParamKind::Constant,
        );
        self
    }

    /// Adds any initializer as is (counted as trainable if `FLOAT`, else as a constant).
    pub fn initializer_proto(&mut self, tensor: TensorProto) -> &mut Self {
        let dims: Vec<usize> = tensor
            .dims
            .iter()
            .map(|&d| usize::try_from(d).unwrap_or(0))
            .collect();
        let kind = if tensor.data_type == Some(dtype::FLOAT) {
            ParamKind::Trainable
        } else {
            ParamKind::Constant
        };
        self.push_initializer(|| tensor, &dims, kind);
        self
    }

    /// Adds a default-domain node. Its name is the one given by [`named`](Self::named), else
    /// `{op_type}_{n}`. An empty input name marks an omitted optional input.
    pub fn node(
        &mut self,
        op_type: &str,
        inputs: &[impl AsRef<str>],
        outputs: &[impl AsRef<str>],
        attrs: Vec<Attr>,
    ) -> &mut Self {
        let name = self.layer_name(op_type);
        self.push_node(op_type, name, inputs, outputs, attrs);
        self
    }

    fn push_node(
        &mut self,
        op_type: &str,
        name: String,
        inputs: &[impl AsRef<str>],
        outputs: &[impl AsRef<str>],
        attrs: Vec<Attr>,
    ) {
        let outputs: Vec<String> = outputs.iter().map(|o| o.as_ref().to_owned()).collect();
        for o in &outputs {
            self.claim(o);
        }
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|i| i.as_ref().to_owned()).collect(),
            output: outputs,
            name: Some(name),
            op_type: Some(op_type.to_owned()),
            attribute: attrs.into_iter().map(Attr::into_proto).collect(),
            ..Default::default()
        });
    }

    /// Adds a one-output node named by [`named`](Self::named) or `{prefix}_{n}`, whose output
    /// has the node's name; returns that name.
    fn layer(&mut self, op_type: &str, prefix: &str, inputs: &[&str], attrs: Vec<Attr>) -> String {
        let name = self.layer_name(prefix);
        self.push_node(op_type, name.clone(), inputs, &[name.as_str()], attrs);
        name
    }

    /// Adds a float initializer whose values `gen` draws from the builder's generator (not
    /// called in a dry run).
    fn random_param(
        &mut self,
        name: &str,
        dims: &[usize],
        kind: ParamKind,
        generator: impl FnOnce(&mut ChaCha8Rng, usize) -> Vec<f32>,
    ) {
        let data = if self.dry_run {
            Vec::new()
        } else {
            generator(&mut self.rng, numel(dims))
        };
        self.push_initializer(|| tensor_f32(name, dims, &data), dims, kind);
    }

    /// `Conv` with a square `kernel`, `stride`, symmetric `pad` and `groups`; weight
    /// `[out_c, in_c/groups, k, k]` He-initialised (normal, std `sqrt(2/fan_in)`), optional small
    /// random bias. Returns the output name.
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        &mut self,
        input: &str,
        in_c: usize,
        out_c: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
        groups: usize,
        bias: bool,
    ) -> String {
        assert!(
            groups > 0 && in_c.is_multiple_of(groups) && out_c.is_multiple_of(groups),
            "conv: channels {in_c}->{out_c} not divisible by groups {groups}"
        );
        let name = self.layer_name("conv");
        let fan_in = in_c / groups * kernel * kernel;
        let std = (2.0 / fan_in as f64).sqrt();
        let w = format!("{name}.weight");
        self.random_param(
            &w,
            &[out_c, in_c / groups, kernel, kernel],
            ParamKind::Trainable,
            |rng, n| normal(rng, n, std),
        );
        let mut inputs = vec![input.to_owned(), w];
        if bias {
            let b = format!("{name}.bias");
            self.random_param(&b, &[out_c], ParamKind::Trainable, |rng, n| {
                uniform(rng, n, -0.05, 0.05)
            });
            inputs.push(b);
        }
        let (k, s, p) = (kernel as i64, stride as i64, pad as i64);
        let attrs = vec![
            Attr::ints("kernel_shape", &[k, k]),
            Attr::ints("strides", &[s, s]),
            Attr::ints("pads", &[p, p, p, p]),
            Attr::ints("dilations", &[1, 1]),
            Attr::int("group", groups as i64),
        ];
        self.push_node("Conv", name.clone(), &inputs, &[name.as_str()], attrs);
        name
    }

    /// `BatchNormalization` over `c` channels (epsilon [`BN_EPSILON`]) with non-trivial
    /// inference statistics: gamma in [0.75, 1.25), beta in [-0.1, 0.1), running mean in
    /// [-0.2, 0.2), running variance in [0.75, 1.5). Returns the output name.
    pub fn batchnorm(&mut self, input: &str, c: usize) -> String {
        self.batchnorm_scaled(input, c, 1.0)
    }

    /// [`batchnorm`](Self::batchnorm) with gamma multiplied by `gamma_scale` (e.g. a small scale
    /// on a residual branch's last BN keeps a deep ResNet's activations O(1)).
    pub fn batchnorm_scaled(&mut self, input: &str, c: usize, gamma_scale: f32) -> String {
        let name = self.layer_name("bn");
        let names = [
            format!("{name}.weight"),
            format!("{name}.bias"),
            format!("{name}.running_mean"),
            format!("{name}.running_var"),
        ];
        self.random_param(&names[0], &[c], ParamKind::Trainable, |rng, n| {
            let mut g = uniform(rng, n, 0.75, 1.25);
            g.iter_mut().for_each(|v| *v *= gamma_scale);
            g
        });
        self.random_param(&names[1], &[c], ParamKind::Trainable, |rng, n| {
            uniform(rng, n, -0.1, 0.1)
        });
        self.random_param(&names[2], &[c], ParamKind::Buffer, |rng, n| {
            uniform(rng, n, -0.2, 0.2)
        });
        self.random_param(&names[3], &[c], ParamKind::Buffer, |rng, n| {
            uniform(rng, n, 0.75, 1.5)
        });
        let inputs = [input, names[0].as_str(), &names[1], &names[2], &names[3]];
        let attrs = vec![
            Attr::float("epsilon", BN_EPSILON),
            Attr::float("momentum", 0.9),
        ];
        self.push_node(
            "BatchNormalization",
            name.clone(),
            &inputs,
            &[name.as_str()],
            attrs,
        );
        name
    }

    /// `Relu`. Returns the output name.
    pub fn relu(&mut self, input: &str) -> String {
        self.layer("Relu", "relu", &[input], vec![])
    }

    /// `MaxPool` with square kernel `k`, stride `s` and symmetric padding `p`. Returns the
    /// output name.
    pub fn maxpool(&mut self, input: &str, k: usize, s: usize, p: usize) -> String {
        let (k, s, p) = (k as i64, s as i64, p as i64);
        let attrs = vec![
            Attr::ints("kernel_shape", &[k, k]),
            Attr::ints("strides", &[s, s]),
            Attr::ints("pads", &[p, p, p, p]),
        ];
        self.layer("MaxPool", "maxpool", &[input], attrs)
    }

    /// `GlobalAveragePool`. Returns the output name.
    pub fn global_avg_pool(&mut self, input: &str) -> String {
        self.layer("GlobalAveragePool", "gap", &[input], vec![])
    }

    /// `Flatten` with `axis = 1`. Returns the output name.
    pub fn flatten(&mut self, input: &str) -> String {
        self.layer("Flatten", "flatten", &[input], vec![Attr::int("axis", 1)])
    }

    /// `Gemm` like a PyTorch `Linear`: weight `[out, in]` with `transB = 1`, He-initialised,
    /// small random bias. Returns the output name.
    pub fn gemm(&mut self, input: &str, in_features: usize, out_features: usize) -> String {
        let name = self.layer_name("gemm");
        let std = (2.0 / in_features as f64).sqrt();
        let w = format!("{name}.weight");
        let b = format!("{name}.bias");
        self.random_param(
            &w,
            &[out_features, in_features],
            ParamKind::Trainable,
            |rng, n| normal(rng, n, std),
        );
        self.random_param(&b, &[out_features], ParamKind::Trainable, |rng, n| {
            uniform(rng, n, -0.05, 0.05)
        });
        let attrs = vec![
            Attr::float("alpha", 1.0),
            Attr::float("beta", 1.0),
            Attr::int("transB", 1),
        ];
        self.push_node(
            "Gemm",
            name.clone(),
            &[input, w.as_str(), b.as_str()],
            &[name.as_str()],
            attrs,
        );
        name
    }

    /// `Add` of two tensors. Returns the output name.
    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.layer("Add", "add", &[a, b], vec![])
    }

    /// Renames value `old` to `new` in all node inputs and outputs and graph inputs and outputs
    /// added so far (e.g. to call a layer helper's output `"logits"`).
    pub fn rename_value(&mut self, old: &str, new: &str) -> &mut Self {
        let rename = |s: &mut String| {
            if s == old {
                new.clone_into(s);
            }
        };
        for n in &mut self.nodes {
            n.input.iter_mut().for_each(rename);
            n.output.iter_mut().for_each(rename);
        }
        for v in self.inputs.iter_mut().chain(self.outputs.iter_mut()) {
            if let Some(name) = &mut v.name {
                rename(name);
            }
        }
        self.claim(new);
        self
    }

    /// The model, cloning the builder's contents (see [`into_model`](Self::into_model)).
    pub fn build(&self) -> ModelProto {
        self.clone().into_model()
    }

    /// The model, consuming the builder (no copy of the weights).
    pub fn into_model(self) -> ModelProto {
        ModelProto {
            ir_version: Some(self.ir_version),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(self.opset),
            }],
            producer_name: Some("lrp-testkit".to_owned()),
            producer_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            graph: Some(GraphProto {
                node: self.nodes,
                name: Some(self.name),
                initializer: self.initializers,
                input: self.inputs,
                output: self.outputs,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Builds the model and writes it to `path`.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        crate::write_model(&self.build(), path)
    }
}

/// `n` samples of a normal distribution with mean 0 and standard deviation `std`
/// (Box–Muller on the generator's uniform doubles).
pub(crate) fn normal(rng: &mut impl Rng, n: usize, std: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        // u1 in (0, 1], so ln(u1) is finite.
        let u1 = 1.0 - rng.random::<f64>();
        let u2 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let theta = std::f64::consts::TAU * u2;
        out.push((r * theta.cos()) as f32);
        if out.len() < n {
            out.push((r * theta.sin()) as f32);
        }
    }
    out
}

/// `n` samples uniform in `[lo, hi)`.
pub(crate) fn uniform(rng: &mut impl Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n)
        .map(|_| lo + (hi - lo) * rng.random::<f32>())
        .collect()
}
