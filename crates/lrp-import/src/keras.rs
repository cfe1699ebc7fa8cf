//! Keras importer: `.keras` (Keras 3 zip) and `.h5` (Keras 3 legacy HDF5 and tf_keras 2 HDF5)
//! models, Sequential or Functional (nested models inlined as `outer/inner`), into the graph IR.
//!
//! Keras tensors are channels-last; the IR's convolutions and pools are NCHW. The graph input
//! stays NHWC (`Layout::NHWC`) and is transposed to NCHW by the first node; a `Flatten` of a
//! 4-D tensor is preceded by a transpose back to NHWC so the flattened order matches Keras.
//! `Reshape` and `Permute` work on that NHWC view in the same way. Tensors of other ranks keep
//! Keras' axis order. `Rescaling` and `Normalization` (`x·scale + offset`) are folded into the
//! Conv2D or Dense that is their only consumer where that is exact (no zero padding after a
//! non-zero offset), and become an affine `BatchNorm` node otherwise. Layers without an exact IR
//! equivalent are refused. See `docs/keras.md`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use hdf5_pure::{AttrValue, File as H5File, Group};
use lrp_ir::{Layout, NodeDef, Op, Weights};
use ndarray::{ArrayD, IxDyn};
use serde_json::Value;

use crate::error::ImportError;
use crate::{Converted, Imported};

/// Keras layer classes the importer converts.
pub const SUPPORTED_LAYERS: &[&str] = &[
    "InputLayer",
    "Conv2D",
    "DepthwiseConv2D",
    "Dense",
    "Activation",
    "ReLU",
    "MaxPooling2D",
    "AveragePooling2D",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling2D",
    "Flatten",
    "BatchNormalization",
    "Add",
    "Concatenate",
    "ZeroPadding2D",
    "Dropout",
    "SeparableConv2D",
    "LeakyReLU",
    "SpatialDropout2D",
    "Permute",
    "Reshape",
    "Rescaling",
    "Normalization",
    "Cropping2D",
    "ELU",
];

/// Why some common layer classes cannot be imported (added to the "unsupported" error).
fn unsupported_reason(class: &str) -> Option<&'static str> {
    match class {
        "Lambda" => Some("Lambda layers hold Python code, which cannot be converted"),
        _ => None,
    }
}

/// A pending `Rescaling` (`x·scale + offset`, each a scalar or one value per channel), folded
/// into the Conv2D or Dense that consumes it.
#[derive(Clone, Debug)]
struct Rescale {
    layer: String,
    class: String,
    scale: Vec<f32>,
    offset: Vec<f32>,
}

impl Rescale {
    /// `self` followed by `next`: `(x·s₁ + o₁)·s₂ + o₂`, as `next`'s layer.
    fn then(&self, next: &Rescale) -> Result<Rescale, String> {
        let n = [&self.scale, &self.offset, &next.scale, &next.offset]
            .iter()
            .map(|v| v.len())
            .max()
            .unwrap_or(1);
        let at = |v: &[f32], i: usize| -> Result<f32, String> {
            match v.len() {
                1 => Ok(v[0]),
                m if m == n => Ok(v[i]),
                m => Err(format!(
                    "'{}' ({m} values) and '{}' ({n} values) do not broadcast",
                    self.layer, next.layer
                )),
            }
        };
        let mut scale = Vec::with_capacity(n);
        let mut offset = Vec::with_capacity(n);
        for i in 0..n {
            let s2 = at(&next.scale, i)?;
            scale.push(at(&self.scale, i)? * s2);
            offset.push(at(&self.offset, i)? * s2 + at(&next.offset, i)?);
        }
        Ok(Rescale {
            layer: next.layer.clone(),
            class: next.class.clone(),
            scale,
            offset,
        })
    }
}

/// Reads and converts a Keras model: `.keras` (zip) or `.h5`/`.hdf5` (whole-model HDF5).
pub fn import_keras(path: &Path) -> Result<Imported, ImportError> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let bytes = std::fs::read(path).map_err(|e| file_err(path, format!("cannot read: {e}")))?;
    let (config, weights) = match ext.as_str() {
        "keras" => read_keras_zip(path, bytes)?,
        "h5" | "hdf5" => read_h5_model(path, bytes)?,
        _ => {
            return Err(file_err(
                path,
                "unknown Keras file type (expected .keras or .h5)",
            ));
        }
    };
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let name = name.split('.').next().unwrap_or("model").to_string();
    let name = if name.is_empty() {
        "model".into()
    } else {
        name
    };
    Builder::new(path, weights).convert(&config, &name)
}

fn file_err(path: &Path, message: impl Into<String>) -> ImportError {
    ImportError::Model {
        path: PathBuf::from(path),
        node: None,
        op_type: None,
        message: message.into(),
    }
}

/// Weights per layer name, in the layer's own order.
type LayerWeights = HashMap<String, Vec<ArrayD<f32>>>;

fn h5_err(path: &Path, what: &str, e: hdf5_pure::Error) -> ImportError {
    file_err(
        path,
        format!("{what}: {e} (is the HDF5 file truncated or damaged?)"),
    )
}

fn attr_string(v: &AttrValue) -> Option<String> {
    match v {
        AttrValue::String(s)
        | AttrValue::AsciiString(s)
        | AttrValue::VarLenString(s)
        | AttrValue::VarLenAsciiString(s) => Some(s.clone()),
        AttrValue::StringSized { value, .. } | AttrValue::AsciiStringSized { value, .. } => {
            Some(value.clone())
        }
        _ => None,
    }
}

fn attr_strings(v: &AttrValue) -> Option<Vec<String>> {
    match v {
        AttrValue::StringArray(a)
        | AttrValue::AsciiStringArray(a)
        | AttrValue::VarLenStringArray(a)
        | AttrValue::VarLenAsciiStringArray(a)
        | AttrValue::VarLenAsciiCharArray(a) => Some(a.clone()),
        AttrValue::StringArraySized { values, .. }
        | AttrValue::AsciiStringArraySized { values, .. } => Some(values.clone()),
        // Keras writes an empty list as an empty float64 array.
        AttrValue::F64Array(a) if a.is_empty() => Some(Vec::new()),
        AttrValue::F32Array(a) if a.is_empty() => Some(Vec::new()),
        other => attr_string(other).map(|s| vec![s]),
    }
}

fn read_dataset(path: &Path, group: &Group, name: &str) -> Result<ArrayD<f32>, ImportError> {
    let ds = group
        .dataset(name)
        .map_err(|e| h5_err(path, &format!("weight '{name}'"), e))?;
    let shape: Vec<usize> = ds
        .shape()
        .map_err(|e| h5_err(path, &format!("weight '{name}'"), e))?
        .into_iter()
        .map(|d| d as usize)
        .collect();
    let data = ds
        .read_f32()
        .map_err(|e| h5_err(path, &format!("weight '{name}'"), e))?;
    ArrayD::from_shape_vec(IxDyn(&shape), data)
        .map_err(|e| file_err(path, format!("weight '{name}': {e}")))
}

/// `.keras`: `config.json` plus `model.weights.h5` with `layers/<group>/vars/<i>`, the layer's
/// real name in the `name` attribute of `vars`.
fn read_keras_zip(path: &Path, bytes: Vec<u8>) -> Result<(Value, LayerWeights), ImportError> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| {
        file_err(
            path,
            format!("not a readable Keras .keras archive (a zip file is expected): {e}"),
        )
    })?;
    let mut member = |name: &str| -> Result<Vec<u8>, ImportError> {
        let mut f = zip
            .by_name(name)
            .map_err(|e| file_err(path, format!("archive member '{name}': {e}")))?;
        let mut out = Vec::new();
        f.read_to_end(&mut out)
            .map_err(|e| file_err(path, format!("archive member '{name}': {e}")))?;
        Ok(out)
    };
    let config: Value = serde_json::from_slice(&member("config.json")?)
        .map_err(|e| file_err(path, format!("config.json: {e}")))?;
    let h5 = H5File::from_bytes(member("model.weights.h5")?)
        .map_err(|e| h5_err(path, "model.weights.h5", e))?;
    let mut weights = LayerWeights::new();
    let root = h5.root();
    let groups = root
        .groups()
        .map_err(|e| h5_err(path, "model.weights.h5", e))?;
    if !groups.iter().any(|g| g == "layers") {
        // Nothing to read here; the config check reports what is wrong.
        return Ok((config, weights));
    }
    read_zip_layers(path, &h5, "layers", "", &mut weights)?;
    Ok((config, weights))
}

/// Reads the layer groups under `dir` (`layers` or `layers/<group>/layers` of a nested model)
/// into `weights`, keyed by `prefix` + the layer's name.
fn read_zip_layers(
    path: &Path,
    h5: &H5File,
    dir: &str,
    prefix: &str,
    weights: &mut LayerWeights,
) -> Result<(), ImportError> {
    let layers = h5
        .group(dir)
        .map_err(|e| h5_err(path, &format!("model.weights.h5 {dir}"), e))?;
    for g in layers
        .groups()
        .map_err(|e| h5_err(path, &format!("model.weights.h5 {dir}"), e))?
    {
        let here = format!("{dir}/{g}");
        let sub = layers
            .group(&g)
            .map_err(|e| h5_err(path, &here, e))?
            .groups()
            .map_err(|e| h5_err(path, &here, e))?;
        if !sub.iter().any(|s| s == "vars") {
            continue;
        }
        let vars = h5
            .group(&format!("{here}/vars"))
            .map_err(|e| h5_err(path, &format!("{here}/vars"), e))?;
        let attrs = vars
            .attrs()
            .map_err(|e| h5_err(path, &format!("{here}/vars"), e))?;
        let Some(name) = attrs.get("name").and_then(attr_string) else {
            continue;
        };
        let mut idx: Vec<(usize, String)> = vars
            .datasets()
            .map_err(|e| h5_err(path, &format!("{here}/vars"), e))?
            .into_iter()
            .filter_map(|d| d.parse().ok().map(|i| (i, d)))
            .collect();
        idx.sort();
        let mut arrays = Vec::new();
        for (_, d) in idx {
            arrays.push(read_dataset(path, &vars, &d)?);
        }
        let key = format!("{prefix}{name}");
        if sub.iter().any(|s| s == "layers") {
            // A nested model: its layers' weights live one level down.
            read_zip_layers(
                path,
                h5,
                &format!("{here}/layers"),
                &format!("{key}/"),
                weights,
            )?;
        }
        weights.insert(key, arrays);
    }
    Ok(())
}

/// The layer that owns weight `weight_name` of the `model_weights/<group>` group, as a key of
/// [`LayerWeights`]: `group` for the group's own layer, `group/…/inner` for a layer of a nested
/// model (Keras 3 writes the nested path, `blk/c1/kernel`; tf_keras only the layer,
/// `c1/kernel:0`).
fn h5_weight_owner(group: &str, weight_name: &str) -> String {
    let name = weight_name.strip_suffix(":0").unwrap_or(weight_name);
    let mut comps: Vec<&str> = name.split('/').collect();
    comps.pop();
    match comps.last() {
        None => group.to_string(),
        Some(&last) if last == group => group.to_string(),
        Some(_) => {
            let inner = match comps.iter().position(|&c| c == group) {
                Some(i) => &comps[i + 1..],
                None => &comps[..],
            };
            format!("{group}/{}", inner.join("/"))
        }
    }
}

/// Whole-model `.h5`: root attribute `model_config`, weights under `model_weights/<layer>`
/// listed by the `weight_names` attribute.
fn read_h5_model(path: &Path, bytes: Vec<u8>) -> Result<(Value, LayerWeights), ImportError> {
    let h5 = H5File::from_bytes(bytes)
        .map_err(|e| h5_err(path, "not a readable Keras .h5 file (HDF5)", e))?;
    let root = h5.root();
    let attrs = root
        .attrs()
        .map_err(|e| h5_err(path, "root attributes", e))?;
    let Some(text) = attrs.get("model_config").and_then(attr_string) else {
        return Err(file_err(
            path,
            "the file holds weights only (no model_config); save the whole model with model.save(\"model.keras\") (or model.save(\"model.h5\")), not model.save_weights(...)",
        ));
    };
    let config: Value =
        serde_json::from_str(&text).map_err(|e| file_err(path, format!("model_config: {e}")))?;
    let mw = h5
        .group("model_weights")
        .map_err(|e| h5_err(path, "model_weights", e))?;
    let mut weights = LayerWeights::new();
    for layer in mw.groups().map_err(|e| h5_err(path, "model_weights", e))? {
        let g = mw
            .group(&layer)
            .map_err(|e| h5_err(path, &format!("model_weights/{layer}"), e))?;
        let a = g
            .attrs()
            .map_err(|e| h5_err(path, &format!("model_weights/{layer}"), e))?;
        let names = a
            .get("weight_names")
            .and_then(attr_strings)
            .unwrap_or_default();
        for n in names {
            let a = read_dataset(path, &g, &n)?;
            weights
                .entry(h5_weight_owner(&layer, &n))
                .or_default()
                .push(a);
        }
    }
    Ok((config, weights))
}

/// A tensor during conversion: the IR name and its per-sample IR shape (NCHW for 4-D).
#[derive(Clone)]
struct Tensor {
    name: String,
    shape: Vec<usize>,
}

struct ParamMap<'a>(&'a [(&'static str, ArrayD<f32>)]);

impl lrp_ir::op::ParamShapes for ParamMap<'_> {
    fn param_shape(&self, name: &str) -> Option<&[usize]> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| a.shape())
    }
}

struct Builder<'p> {
    path: &'p Path,
    weights_in: LayerWeights,
    weights: Weights,
    nodes: Vec<NodeDef>,
    used: HashSet<String>,
    tensors: HashMap<String, Tensor>,
    input: Option<(String, Vec<usize>)>,
    warnings: Vec<String>,
    /// `Rescaling` layers not yet folded, by Keras layer name.
    pending: HashMap<String, Rescale>,
    /// The `Rescaling` to fold into the layer being converted.
    fold: Option<Rescale>,
}

/// The layer currently converted, for error messages.
struct Ctx<'a> {
    name: &'a str,
    class: &'a str,
    cfg: &'a Value,
}

impl<'p> Builder<'p> {
    fn new(path: &'p Path, weights_in: LayerWeights) -> Self {
        Builder {
            path,
            weights_in,
            weights: Weights::new(),
            nodes: Vec::new(),
            used: HashSet::new(),
            tensors: HashMap::new(),
            input: None,
            warnings: Vec::new(),
            pending: HashMap::new(),
            fold: None,
        }
    }

    fn err(&self, c: &Ctx, message: impl Into<String>) -> ImportError {
        ImportError::Model {
            path: PathBuf::from(self.path),
            node: Some(c.name.to_string()),
            op_type: Some(c.class.to_string()),
            message: message.into(),
        }
    }

    fn unique(&mut self, base: &str) -> String {
        let mut n = base.to_string();
        let mut k = 1;
        while self.used.contains(&n) {
            n = format!("{base}_{k}");
            k += 1;
        }
        self.used.insert(n.clone());
        n
    }

    /// Adds a node, inferring its shape; returns its output tensor.
    fn emit(
        &mut self,
        c: &Ctx,
        base: &str,
        op: Op,
        inputs: &[Tensor],
        params: Vec<(&'static str, ArrayD<f32>)>,
    ) -> Result<Tensor, ImportError> {
        let shapes: Vec<&[usize]> = inputs.iter().map(|t| t.shape.as_slice()).collect();
        let shape = op
            .infer_shape(&shapes, &ParamMap(&params))
            .map_err(|m| self.err(c, m))?;
        let name = self.unique(base);
        let mut pm = BTreeMap::new();
        for (p, a) in params {
            let key = format!("{name}.{p}");
            self.weights.insert(key.clone(), a);
            pm.insert(p.to_string(), key);
        }
        self.nodes.push(NodeDef {
            name: name.clone(),
            op,
            inputs: inputs.iter().map(|t| t.name.clone()).collect(),
            params: pm,
        });
        Ok(Tensor { name, shape })
    }

    fn convert(mut self, model: &Value, name: &str) -> Result<Imported, ImportError> {
        // Check every class first (nested models included) so that the error lists all
        // unsupported layers.
        let mut bad = Vec::new();
        let mut first_bad = None;
        unsupported_layers(model, "", &mut bad, &mut first_bad);
        if let Some((node, class)) = first_bad {
            return Err(ImportError::Model {
                path: PathBuf::from(self.path),
                node: Some(node),
                op_type: Some(class),
                message: format!(
                    "unsupported layer class; unsupported layers: {} (supported: {}, and nested Sequential/Functional models of them)",
                    bad.join(", "),
                    SUPPORTED_LAYERS.join(", ")
                ),
            });
        }
        let out = self.model(model, "", None)?;
        let (input_name, input_shape) = self
            .input
            .clone()
            .ok_or_else(|| file_err(self.path, "the model has no input layer"))?;
        if out.name == input_name {
            return Err(file_err(self.path, "the model's output is its input"));
        }
        let mut unused: Vec<&String> = self
            .weights_in
            .iter()
            .filter(|(_, w)| !w.is_empty())
            .map(|(n, _)| n)
            .collect();
        unused.sort();
        for n in unused {
            self.warnings.push(format!(
                "weights of '{n}' match no layer of the model and were ignored"
            ));
        }
        Converted {
            name: name.to_string(),
            input: (input_name, input_shape),
            image_layout: Layout::NHWC,
            output: out.name,
            nodes: self.nodes,
            weights: self.weights,
            warnings: self.warnings,
        }
        .finish(self.path)
    }

    /// Converts the layers of a Sequential or Functional model and returns its output.
    /// `scope` prefixes its layer names (`"blk/"` inside a nested model `blk`); `bound` is what
    /// a nested model's input stands for (`None` at the top, where the input becomes the
    /// graph's input).
    fn model(
        &mut self,
        model: &Value,
        scope: &str,
        bound: Option<Tensor>,
    ) -> Result<Tensor, ImportError> {
        let class = model
            .get("class_name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let cfg = model.get("config").unwrap_or(&Value::Null);
        let Some(layers) = cfg.get("layers").and_then(Value::as_array) else {
            return Err(file_err(
                self.path,
                format!(
                    "model class '{class}' has no layer list in its config (subclassed models cannot be imported; build the model with the Sequential or Functional API)"
                ),
            ));
        };
        let sequential = match class {
            "Sequential" => true,
            c if is_model_class(c) => false,
            other => {
                return Err(file_err(
                    self.path,
                    format!(
                        "model class '{other}' is not supported (expected Sequential or Functional)"
                    ),
                ));
            }
        };
        // How many layers read each layer (Functional), to fold a Rescaling only into its sole
        // consumer.
        let mut consumers: HashMap<String, usize> = HashMap::new();
        if !sequential {
            for l in layers {
                let first = l
                    .get("inbound_nodes")
                    .and_then(Value::as_array)
                    .and_then(|a| a.first());
                if let Some(n) = first {
                    let mut v = Vec::new();
                    collect_inbound(n, &mut v);
                    for x in v {
                        *consumers.entry(format!("{scope}{x}")).or_default() += 1;
                    }
                }
            }
        }
        let output_ref = cfg
            .get("output_layers")
            .and_then(first_layer_ref)
            .map(|n| format!("{scope}{n}"));
        let mut last: Option<String> = None;
        for (i, l) in layers.iter().enumerate() {
            let lname = format!("{scope}{}", layer_name(l));
            let lclass = l.get("class_name").and_then(Value::as_str).unwrap_or("?");
            let lcfg = l.get("config").unwrap_or(&Value::Null);
            let c = Ctx {
                name: &lname,
                class: lclass,
                cfg: lcfg,
            };
            let inputs: Vec<String> = if lclass == "InputLayer" {
                Vec::new()
            } else if sequential {
                match &last {
                    Some(p) => vec![p.clone()],
                    None => {
                        // Sequential without an InputLayer: the first layer reads the input.
                        let input = format!("{scope}input");
                        match &bound {
                            Some(t) => {
                                self.tensors.insert(input.clone(), t.clone());
                            }
                            None => {
                                let shape = batch_shape(lcfg).ok_or_else(|| {
                                    self.err(&c, "the model's input shape is not recorded; build the model with an Input layer before saving")
                                })?;
                                self.add_input(&input, &shape, &c)?;
                            }
                        }
                        vec![input]
                    }
                }
            } else {
                let mut v = Vec::new();
                if let Some(nodes) = l.get("inbound_nodes").and_then(Value::as_array) {
                    if nodes.len() > 1 {
                        return Err(self.err(
                            &c,
                            "shared layers (called more than once) are not supported",
                        ));
                    }
                    if let Some(n) = nodes.first() {
                        collect_inbound(n, &mut v);
                    }
                }
                v.into_iter().map(|n| format!("{scope}{n}")).collect()
            };
            if i == 0 && lclass != "InputLayer" && !sequential {
                return Err(self.err(
                    &c,
                    "the first layer of a Functional model must be an InputLayer",
                ));
            }
            // A pending Rescaling/Normalization is folded into this layer where that is exact,
            // and becomes an affine node of its own otherwise.
            for n in &inputs {
                if let Some(r) = self.pending.remove(n) {
                    if can_fold(lclass, lcfg, inputs.len(), &r) {
                        self.fold = Some(r);
                    } else {
                        let t = self.tensors[n].clone();
                        let y = self.affine(&r, t)?;
                        self.tensors.insert(n.clone(), y);
                    }
                }
            }
            let ins: Vec<Tensor> = inputs
                .iter()
                .map(|n| {
                    self.tensors
                        .get(n)
                        .cloned()
                        .ok_or_else(|| self.err(&c, format!("input '{n}' is not a known layer")))
                })
                .collect::<Result<_, _>>()?;
            let out = if lclass == "InputLayer" && bound.is_some() {
                bound.clone().expect("checked")
            } else if is_model_class(lclass) {
                let x = self.one(&c, &ins)?;
                self.model(l, &format!("{lname}/"), Some(x))?
            } else {
                self.layer(&c, &ins)?
            };
            if let Some(r) = self.fold.take() {
                return Err(self.err(
                    &c,
                    format!(
                        "the Rescaling '{}' could not be folded into this layer",
                        r.layer
                    ),
                ));
            }
            // A Rescaling/Normalization folds only into a sole consumer that is not the model's
            // output; otherwise it becomes a node now.
            let sole = if sequential {
                i + 1 < layers.len()
            } else {
                consumers.get(&lname) == Some(&1) && output_ref.as_deref() != Some(&lname)
            };
            let mut out = out;
            if !sole && let Some(r) = self.pending.remove(&lname) {
                out = self.affine(&r, out)?;
            }
            self.tensors.insert(lname.clone(), out);
            last = Some(lname);
        }
        let output_layer = if sequential { last } else { output_ref }
            .ok_or_else(|| file_err(self.path, "the model has no output layer"))?;
        self.tensors.get(&output_layer).cloned().ok_or_else(|| {
            file_err(
                self.path,
                format!("output layer '{output_layer}' not found"),
            )
        })
    }

    /// `x·scale + offset` per channel (Keras' last axis) as a `BatchNorm` node with mean 0,
    /// variance 1 and epsilon 0, which computes exactly that.
    fn affine(&mut self, r: &Rescale, x: Tensor) -> Result<Tensor, ImportError> {
        let c = Ctx {
            name: &r.layer,
            class: &r.class,
            cfg: &Value::Null,
        };
        let ch = x.shape.first().copied().unwrap_or(1);
        if x.shape.len() == 2 && (r.scale.len() > 1 || r.offset.len() > 1) {
            return Err(self.err(
                &c,
                format!(
                    "per-channel values on a tensor of per-sample shape {:?} are not supported",
                    x.shape
                ),
            ));
        }
        let per = |v: &[f32], what: &str| -> Result<ArrayD<f32>, ImportError> {
            match v.len() {
                1 => Ok(ArrayD::from_elem(IxDyn(&[ch]), v[0])),
                n if n == ch => {
                    Ok(ArrayD::from_shape_vec(IxDyn(&[ch]), v.to_vec()).expect("length checked"))
                }
                n => Err(self.err(
                    &c,
                    format!("{n} {what} values for a tensor with {ch} channels"),
                )),
            }
        };
        let scale = per(&r.scale, "scale")?;
        let bias = per(&r.offset, "offset")?;
        let base = r.layer.clone();
        self.emit(
            &c,
            &base,
            Op::BatchNorm { epsilon: 0.0 },
            &[x],
            vec![
                ("scale", scale),
                ("bias", bias),
                ("mean", ArrayD::zeros(IxDyn(&[ch]))),
                ("var", ArrayD::ones(IxDyn(&[ch]))),
            ],
        )
    }

    /// `x` (NCHW inside the graph) transposed to Keras' NHWC order, as node `base`.
    fn transpose_to_nhwc(&mut self, c: &Ctx, base: &str, x: Tensor) -> Result<Tensor, ImportError> {
        let perm = vec![0, 2, 3, 1];
        self.emit(c, base, Op::Transpose { perm }, &[x], vec![])
    }

    /// `x` (NHWC, Keras' order) transposed to the graph's NCHW, as node `base`.
    fn transpose_to_nchw(&mut self, c: &Ctx, base: &str, x: Tensor) -> Result<Tensor, ImportError> {
        let perm = vec![0, 3, 1, 2];
        self.emit(c, base, Op::Transpose { perm }, &[x], vec![])
    }

    fn add_input(&mut self, name: &str, shape: &[usize], c: &Ctx) -> Result<(), ImportError> {
        if self.input.is_some() {
            return Err(self.err(c, "models with more than one input are not supported"));
        }
        if shape.is_empty() || shape.contains(&0) {
            return Err(self.err(c, format!("input shape {shape:?} is not fully known")));
        }
        self.used.insert(name.to_string());
        self.input = Some((name.to_string(), shape.to_vec()));
        let t = Tensor {
            name: name.to_string(),
            shape: shape.to_vec(),
        };
        let t = match shape.len() {
            3 => self.transpose_to_nchw(c, &format!("{name}_nchw"), t)?,
            1 => t,
            r => {
                return Err(self.err(
                    c,
                    format!("inputs of rank {r} (per sample) are not supported; expected (H, W, C) images or feature vectors"),
                ));
            }
        };
        self.tensors.insert(name.to_string(), t);
        Ok(())
    }

    fn take_weights(&mut self, c: &Ctx, n: usize) -> Result<Vec<ArrayD<f32>>, ImportError> {
        // tf_keras .h5 files name a nested model's weights by the innermost layer only.
        let flat = match c.name.split('/').collect::<Vec<_>>()[..] {
            [outer, .., inner] => Some(format!("{outer}/{inner}")),
            _ => None,
        };
        let w = match self.weights_in.remove(c.name) {
            Some(w) => w,
            None => flat
                .and_then(|k| self.weights_in.remove(&k))
                .unwrap_or_default(),
        };
        if w.len() != n {
            return Err(self.err(
                c,
                format!(
                    "expected {n} weight tensor(s) in the file, found {}",
                    w.len()
                ),
            ));
        }
        Ok(w)
    }

    fn check_shape(
        &self,
        c: &Ctx,
        what: &str,
        a: &ArrayD<f32>,
        want: &[usize],
    ) -> Result<(), ImportError> {
        if a.shape() != want {
            return Err(self.err(
                c,
                format!(
                    "{what} has shape {:?} in the file, expected {want:?} from the layer config",
                    a.shape()
                ),
            ));
        }
        Ok(())
    }

    fn one(&self, c: &Ctx, ins: &[Tensor]) -> Result<Tensor, ImportError> {
        match ins {
            [t] => Ok(t.clone()),
            _ => Err(self.err(c, format!("takes 1 input, got {}", ins.len()))),
        }
    }

    fn four_d(&self, c: &Ctx, t: &Tensor) -> Result<[usize; 3], ImportError> {
        match t.shape[..] {
            [ch, h, w] => Ok([ch, h, w]),
            _ => Err(self.err(
                c,
                format!(
                    "expects a 4-D (N, H, W, C) input, got per-sample shape {:?}",
                    t.shape
                ),
            )),
        }
    }

    fn channels_last(&self, c: &Ctx) -> Result<(), ImportError> {
        match c.cfg.get("data_format").and_then(Value::as_str) {
            None | Some("channels_last") => Ok(()),
            Some(f) => Err(self.err(
                c,
                format!("data_format '{f}' is not supported (only channels_last)"),
            )),
        }
    }

    fn activation(
        &mut self,
        c: &Ctx,
        t: Tensor,
        act: &str,
        fused: bool,
    ) -> Result<Tensor, ImportError> {
        let op = match act {
            "linear" => {
                if fused {
                    return Ok(t);
                }
                Op::Identity
            }
            "relu" => Op::Relu,
            "sigmoid" => Op::Sigmoid,
            "tanh" => Op::Tanh,
            "relu6" => Op::Clip { min: 0.0, max: 6.0 },
            "softmax" => Op::Softmax { axis: 1 },
            // keras.activations.leaky_relu defaults to negative_slope = 0.2.
            "leaky_relu" => Op::LeakyRelu { alpha: 0.2 },
            "elu" => Op::Elu { alpha: 1.0 },
            // keras.activations.selu's constants.
            "selu" => Op::Selu {
                alpha: 1.673_263_2,
                gamma: 1.050_701,
            },
            "gelu" | "silu" | "swish" | "softplus" | "softsign" | "mish" | "exponential"
            | "hard_sigmoid" => {
                return Err(self.err(
                    c,
                    format!("activation '{act}' is not supported: the IR has no matching op"),
                ));
            }
            other => {
                return Err(self.err(c, format!("activation '{other}' is not supported")));
            }
        };
        if op == (Op::Softmax { axis: 1 }) && t.shape.len() != 1 && t.shape.len() != 3 {
            return Err(self.err(
                c,
                "softmax is supported on (N, C) and (N, H, W, C) tensors only",
            ));
        }
        let base = if fused {
            format!("{}_{act}", c.name)
        } else {
            c.name.to_string()
        };
        self.emit(c, &base, op, &[t], vec![])
    }

    fn fused_activation(&mut self, c: &Ctx, t: Tensor) -> Result<Tensor, ImportError> {
        let act = activation_name(c.cfg.get("activation"));
        let act = act.map_err(|m| self.err(c, m))?;
        self.activation(c, t, &act, true)
    }

    fn layer(&mut self, c: &Ctx, ins: &[Tensor]) -> Result<Tensor, ImportError> {
        let cfg = c.cfg;
        match c.class {
            "InputLayer" => {
                let shape = batch_shape(cfg).ok_or_else(|| {
                    self.err(c, "no batch_shape / batch_input_shape in the config")
                })?;
                self.add_input(c.name, &shape, c)?;
                Ok(self.tensors[c.name].clone())
            }
            "Conv2D" | "DepthwiseConv2D" => {
                let x = self.one(c, ins)?;
                self.channels_last(c)?;
                let [ch, h, w] = self.four_d(c, &x)?;
                let k =
                    pair(cfg.get("kernel_size")).ok_or_else(|| self.err(c, "bad kernel_size"))?;
                let s = pair(cfg.get("strides")).unwrap_or([1, 1]);
                let d = pair(cfg.get("dilation_rate")).unwrap_or([1, 1]);
                let pads = self.padding(c, [h, w], k, s, d)?;
                let use_bias = cfg.get("use_bias").and_then(Value::as_bool).unwrap_or(true);
                let mut wts = self.take_weights(c, 1 + usize::from(use_bias))?;
                let mut bias = if use_bias { wts.pop() } else { None };
                let mut kernel = wts.pop().expect("counted");
                let (weight, out, groups) = if c.class == "Conv2D" {
                    let f = cfg.get("filters").and_then(Value::as_u64).unwrap_or(0) as usize;
                    let g = cfg.get("groups").and_then(Value::as_u64).unwrap_or(1) as usize;
                    if g == 0 || ch % g != 0 {
                        return Err(self.err(
                            c,
                            format!("groups = {g} does not divide {ch} input channels"),
                        ));
                    }
                    self.check_shape(c, "kernel", &kernel, &[k[0], k[1], ch / g, f])?;
                    if let Some(r) = self.fold.take() {
                        if pads != [0; 4] && r.offset.iter().any(|&o| o != 0.0) {
                            return Err(self.err(
                                c,
                                format!("the Rescaling '{}' has a non-zero offset and this convolution zero-pads its input ('same' padding), so folding the offset would be wrong at the borders; use padding 'valid' or add the offset to the input yourself", r.layer),
                            ));
                        }
                        if g != 1 && (r.scale.len() != 1 || r.offset.len() != 1) {
                            return Err(self.err(
                                c,
                                format!("the per-channel Rescaling '{}' cannot be folded into a grouped convolution", r.layer),
                            ));
                        }
                        (kernel, bias) = self.fold_rescale(c, &r, kernel, bias, ch)?;
                    }
                    let wt = kernel
                        .permuted_axes(IxDyn(&[3, 2, 0, 1]))
                        .as_standard_layout()
                        .into_owned();
                    (wt, f, g)
                } else {
                    let m = cfg
                        .get("depth_multiplier")
                        .and_then(Value::as_u64)
                        .unwrap_or(1) as usize;
                    self.check_shape(c, "depthwise kernel", &kernel, &[k[0], k[1], ch, m])?;
                    (self.depthwise_weight(c, kernel, ch, m, k)?, ch * m, ch)
                };
                let mut params = vec![("weight", weight)];
                if let Some(b) = bias {
                    self.check_shape(c, "bias", &b, &[out])?;
                    params.push(("bias", b));
                }
                let op = Op::Conv {
                    kernel: k,
                    strides: s,
                    pads,
                    dilations: d,
                    groups,
                };
                let y = self.emit(c, c.name, op, &[x], params)?;
                self.fused_activation(c, y)
            }
            "Dense" => {
                let x = self.one(c, ins)?;
                if x.shape.len() != 1 {
                    return Err(self.err(c, format!("Dense on a tensor of per-sample shape {:?} is not supported (flatten it first)", x.shape)));
                }
                let units = cfg.get("units").and_then(Value::as_u64).unwrap_or(0) as usize;
                let use_bias = cfg.get("use_bias").and_then(Value::as_bool).unwrap_or(true);
                let mut wts = self.take_weights(c, 1 + usize::from(use_bias))?;
                let mut bias = if use_bias { wts.pop() } else { None };
                let mut kernel = wts.pop().expect("counted");
                self.check_shape(c, "kernel", &kernel, &[x.shape[0], units])?;
                if let Some(r) = self.fold.take() {
                    (kernel, bias) = self.fold_rescale(c, &r, kernel, bias, x.shape[0])?;
                }
                let mut params = vec![("weight", kernel.t().as_standard_layout().into_owned())];
                if let Some(b) = bias {
                    self.check_shape(c, "bias", &b, &[units])?;
                    params.push(("bias", b));
                }
                let y = self.emit(c, c.name, Op::Dense, &[x], params)?;
                self.fused_activation(c, y)
            }
            "Activation" => {
                let x = self.one(c, ins)?;
                let act = activation_name(cfg.get("activation")).map_err(|m| self.err(c, m))?;
                self.activation(c, x, &act, false)
            }
            "ReLU" => {
                let x = self.one(c, ins)?;
                let num = |k: &str| cfg.get(k).and_then(Value::as_f64);
                let max = num("max_value");
                let slope = num("negative_slope").unwrap_or(0.0);
                let thr = num("threshold").unwrap_or(0.0);
                // Keras: x where x > threshold (else 0; a negative slope adds slope·min(x − θ, 0)),
                // then clipped to [0, max_value] when that is given.
                let clip = |m: f64, min: f32| Op::Clip { min, max: m as f32 };
                let ops = match (max, slope == 0.0, thr == 0.0) {
                    (None, true, true) => vec![Op::Relu],
                    (Some(m), true, true) => vec![clip(m, 0.0)],
                    (None, false, true) => vec![Op::LeakyRelu {
                        alpha: slope as f32,
                    }],
                    // slope·x below 0 stays below max_value: clip from above only.
                    (Some(m), false, true) => vec![
                        Op::LeakyRelu {
                            alpha: slope as f32,
                        },
                        clip(m, f32::NEG_INFINITY),
                    ],
                    (None, true, false) => vec![Op::ThresholdedRelu { alpha: thr as f32 }],
                    (Some(m), true, false) => {
                        vec![Op::ThresholdedRelu { alpha: thr as f32 }, clip(m, 0.0)]
                    }
                    (_, false, false) => {
                        return Err(self.err(
                            c,
                            "ReLU with both a threshold and a negative_slope is not supported",
                        ));
                    }
                };
                let mut y = x;
                let last = ops.len() - 1;
                for (k, op) in ops.into_iter().enumerate() {
                    let base = if k == last {
                        c.name.to_string()
                    } else {
                        format!("{}_{}", c.name, op.kind().to_ascii_lowercase())
                    };
                    y = self.emit(c, &base, op, &[y], vec![])?;
                }
                Ok(y)
            }
            "MaxPooling2D" | "AveragePooling2D" => {
                let x = self.one(c, ins)?;
                self.channels_last(c)?;
                let [_, h, w] = self.four_d(c, &x)?;
                let k = pair(cfg.get("pool_size")).unwrap_or([2, 2]);
                let s = pair(cfg.get("strides")).unwrap_or(k);
                let pads = self.padding(c, [h, w], k, s, [1, 1])?;
                let op = if c.class == "MaxPooling2D" {
                    Op::MaxPool {
                        kernel: k,
                        strides: s,
                        pads,
                        dilations: [1, 1],
                        ceil_mode: false,
                    }
                } else {
                    Op::AvgPool {
                        kernel: k,
                        strides: s,
                        pads,
                        count_include_pad: false,
                        ceil_mode: false,
                    }
                };
                self.emit(c, c.name, op, &[x], vec![])
            }
            "GlobalAveragePooling2D" | "GlobalMaxPooling2D" => {
                let x = self.one(c, ins)?;
                self.channels_last(c)?;
                self.four_d(c, &x)?;
                let op = if c.class == "GlobalAveragePooling2D" {
                    Op::GlobalAvgPool
                } else {
                    Op::GlobalMaxPool
                };
                let keep = cfg
                    .get("keepdims")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                if keep {
                    self.emit(c, c.name, op, &[x], vec![])
                } else {
                    let y = self.emit(c, &format!("{}_pool", c.name), op, &[x], vec![])?;
                    self.emit(c, c.name, Op::Flatten, &[y], vec![])
                }
            }
            "Flatten" => {
                let mut x = self.one(c, ins)?;
                if x.shape.len() == 3 {
                    x = self.transpose_to_nhwc(c, &format!("{}_nhwc", c.name), x)?;
                }
                self.emit(c, c.name, Op::Flatten, &[x], vec![])
            }
            "Dropout" => {
                let x = self.one(c, ins)?;
                self.emit(c, c.name, Op::Dropout, &[x], vec![])
            }
            "BatchNormalization" => {
                let x = self.one(c, ins)?;
                let rank = x.shape.len() + 1;
                let axis = match cfg.get("axis") {
                    Some(Value::Array(a)) if a.len() == 1 => a[0].as_i64(),
                    Some(v) => v.as_i64(),
                    None => Some(-1),
                }
                .unwrap_or(i64::MIN);
                let last = rank as i64 - 1;
                if axis != -1 && axis != last {
                    return Err(self.err(
                        c,
                        format!("axis {axis} is not supported (only the channel axis, -1)"),
                    ));
                }
                let ch = x.shape[0];
                let center = cfg.get("center").and_then(Value::as_bool).unwrap_or(true);
                let scale = cfg.get("scale").and_then(Value::as_bool).unwrap_or(true);
                let eps = cfg.get("epsilon").and_then(Value::as_f64).unwrap_or(1e-3) as f32;
                let n = 2 + usize::from(center) + usize::from(scale);
                let mut wts = self.take_weights(c, n)?.into_iter();
                let ones = ArrayD::from_elem(IxDyn(&[ch]), 1f32);
                let zeros = ArrayD::from_elem(IxDyn(&[ch]), 0f32);
                let gamma = if scale {
                    wts.next().expect("counted")
                } else {
                    ones
                };
                let beta = if center {
                    wts.next().expect("counted")
                } else {
                    zeros
                };
                let mean = wts.next().expect("counted");
                let var = wts.next().expect("counted");
                for (what, a) in [
                    ("gamma", &gamma),
                    ("beta", &beta),
                    ("moving_mean", &mean),
                    ("moving_variance", &var),
                ] {
                    self.check_shape(c, what, a, &[ch])?;
                }
                self.emit(
                    c,
                    c.name,
                    Op::BatchNorm { epsilon: eps },
                    &[x],
                    vec![
                        ("scale", gamma),
                        ("bias", beta),
                        ("mean", mean),
                        ("var", var),
                    ],
                )
            }
            "Add" => {
                if ins.len() < 2 {
                    return Err(self.err(c, format!("takes at least 2 inputs, got {}", ins.len())));
                }
                self.emit(c, c.name, Op::Add, ins, vec![])
            }
            "Concatenate" => {
                let Some(x) = ins.first() else {
                    return Err(self.err(c, "has no inputs"));
                };
                let rank = x.shape.len() as i64 + 1;
                let a = cfg.get("axis").and_then(Value::as_i64).unwrap_or(-1);
                let a = if a < 0 { a + rank } else { a };
                if a <= 0 || a >= rank {
                    return Err(self.err(c, format!("axis {a} is not supported")));
                }
                // NHWC axis → NCHW axis for 4-D tensors.
                let axis = if rank == 4 {
                    [0, 2, 3, 1][a as usize]
                } else {
                    a as usize
                };
                self.emit(c, c.name, Op::Concat { axis }, ins, vec![])
            }
            "SeparableConv2D" => {
                let x = self.one(c, ins)?;
                self.channels_last(c)?;
                let [ch, h, w] = self.four_d(c, &x)?;
                let k =
                    pair(cfg.get("kernel_size")).ok_or_else(|| self.err(c, "bad kernel_size"))?;
                let s = pair(cfg.get("strides")).unwrap_or([1, 1]);
                let d = pair(cfg.get("dilation_rate")).unwrap_or([1, 1]);
                let pads = self.padding(c, [h, w], k, s, d)?;
                let m = cfg
                    .get("depth_multiplier")
                    .and_then(Value::as_u64)
                    .unwrap_or(1) as usize;
                let f = cfg.get("filters").and_then(Value::as_u64).unwrap_or(0) as usize;
                let use_bias = cfg.get("use_bias").and_then(Value::as_bool).unwrap_or(true);
                let mut wts = self.take_weights(c, 2 + usize::from(use_bias))?.into_iter();
                let dw = wts.next().expect("counted");
                let pw = wts.next().expect("counted");
                let bias = wts.next();
                self.check_shape(c, "depthwise kernel", &dw, &[k[0], k[1], ch, m])?;
                self.check_shape(c, "pointwise kernel", &pw, &[1, 1, ch * m, f])?;
                let dw = self.depthwise_weight(c, dw, ch, m, k)?;
                let y = self.emit(
                    c,
                    &format!("{}_depthwise", c.name),
                    Op::Conv {
                        kernel: k,
                        strides: s,
                        pads,
                        dilations: d,
                        groups: ch,
                    },
                    &[x],
                    vec![("weight", dw)],
                )?;
                let pw = pw
                    .permuted_axes(IxDyn(&[3, 2, 0, 1]))
                    .as_standard_layout()
                    .into_owned();
                let mut params = vec![("weight", pw)];
                if let Some(b) = bias {
                    self.check_shape(c, "bias", &b, &[f])?;
                    params.push(("bias", b));
                }
                let op = Op::Conv {
                    kernel: [1, 1],
                    strides: [1, 1],
                    pads: [0; 4],
                    dilations: [1, 1],
                    groups: 1,
                };
                let y = self.emit(c, c.name, op, &[y], params)?;
                self.fused_activation(c, y)
            }
            "LeakyReLU" => {
                let x = self.one(c, ins)?;
                // Keras 3 calls the slope negative_slope, Keras 2 alpha; both default to 0.3.
                let alpha = cfg
                    .get("negative_slope")
                    .or_else(|| cfg.get("alpha"))
                    .and_then(Value::as_f64)
                    .unwrap_or(0.3) as f32;
                self.emit(c, c.name, Op::LeakyRelu { alpha }, &[x], vec![])
            }
            "SpatialDropout2D" => {
                let x = self.one(c, ins)?;
                self.emit(c, c.name, Op::Dropout, &[x], vec![])
            }
            "Permute" => {
                let x = self.one(c, ins)?;
                let dims: Vec<usize> = cfg
                    .get("dims")
                    .and_then(Value::as_array)
                    .and_then(|a| a.iter().map(|v| v.as_u64().map(|d| d as usize)).collect())
                    .ok_or_else(|| self.err(c, "no dims in the config"))?;
                let rank = x.shape.len();
                let mut sorted = dims.clone();
                sorted.sort_unstable();
                if sorted != (1..=rank).collect::<Vec<_>>() {
                    return Err(self.err(
                        c,
                        format!(
                            "dims {dims:?} is not a permutation of the axes 1..={rank} of a per-sample shape {:?}",
                            x.shape
                        ),
                    ));
                }
                let perm = if rank == 3 {
                    // Keras permutes the NHWC view; the tensor here is NCHW. Output NHWC axes
                    // are the input NHWC axes dims[0], dims[1], dims[2]; NHWC axis a is NCHW
                    // axis [_, 2, 3, 1][a].
                    let nchw = [0, 2, 3, 1];
                    vec![0, nchw[dims[2]], nchw[dims[0]], nchw[dims[1]]]
                } else {
                    std::iter::once(0).chain(dims.iter().copied()).collect()
                };
                if perm.iter().enumerate().all(|(i, &p)| i == p) {
                    return self.emit(c, c.name, Op::Identity, &[x], vec![]);
                }
                self.emit(c, c.name, Op::Transpose { perm }, &[x], vec![])
            }
            "Reshape" => {
                let mut x = self.one(c, ins)?;
                let target: Vec<i64> = cfg
                    .get("target_shape")
                    .and_then(Value::as_array)
                    .and_then(|a| a.iter().map(Value::as_i64).collect())
                    .ok_or_else(|| self.err(c, "no target_shape in the config"))?;
                let total: usize = x.shape.iter().product();
                let known: i64 = target.iter().filter(|&&d| d != -1).product();
                let holes = target.iter().filter(|&&d| d == -1).count();
                if target.iter().any(|&d| d == 0 || d < -1) || holes > 1 || known <= 0 {
                    return Err(self.err(c, format!("target_shape {target:?} is not supported")));
                }
                let fill = total as i64 / known;
                if fill * known != total as i64 || (holes == 0 && known != total as i64) {
                    return Err(self.err(c, format!("cannot reshape {total} values to {target:?}")));
                }
                let shape: Vec<usize> = target
                    .iter()
                    .map(|&d| if d == -1 { fill as usize } else { d as usize })
                    .collect();
                // Keras reshapes in NHWC order.
                if x.shape.len() == 3 {
                    x = self.transpose_to_nhwc(c, &format!("{}_nhwc", c.name), x)?;
                }
                if shape.len() == 3 {
                    let y = self.emit(
                        c,
                        &format!("{}_reshape", c.name),
                        Op::Reshape { shape },
                        &[x],
                        vec![],
                    )?;
                    self.transpose_to_nchw(c, c.name, y)
                } else {
                    self.emit(c, c.name, Op::Reshape { shape }, &[x], vec![])
                }
            }
            "Rescaling" | "Normalization" => {
                let x = self.one(c, ins)?;
                let r = if c.class == "Rescaling" {
                    self.rescaling(c)?
                } else {
                    self.normalization(c, &x)?
                };
                let r = match self.fold.take() {
                    Some(prev) => prev.then(&r).map_err(|m| self.err(c, m))?,
                    None => r,
                };
                self.pending.insert(c.name.to_string(), r);
                Ok(x)
            }
            "ELU" => {
                let x = self.one(c, ins)?;
                let alpha = cfg.get("alpha").and_then(Value::as_f64).unwrap_or(1.0) as f32;
                self.emit(c, c.name, Op::Elu { alpha }, &[x], vec![])
            }
            "ZeroPadding2D" | "Cropping2D" => {
                let x = self.one(c, ins)?;
                self.channels_last(c)?;
                self.four_d(c, &x)?;
                let key = if c.class == "Cropping2D" {
                    "cropping"
                } else {
                    "padding"
                };
                let p = cfg.get(key).unwrap_or(&Value::Null);
                let [[t, b], [l, r]] = zero_padding(p)
                    .ok_or_else(|| self.err(c, format!("{key} {p} is not understood")))?;
                // Both as ONNX lays out pads: all begins, then all ends, batch axis included.
                let amounts = vec![0, 0, t, l, 0, 0, b, r];
                let op = if c.class == "Cropping2D" {
                    Op::Crop { crops: amounts }
                } else {
                    Op::Pad { pads: amounts }
                };
                self.emit(c, c.name, op, &[x], vec![])
            }
            other => Err(self.err(c, format!("layer class '{other}' is not supported"))),
        }
    }

    /// A `Rescaling` layer's `x·scale + offset`.
    fn rescaling(&self, c: &Ctx) -> Result<Rescale, ImportError> {
        let scale = numbers(c.cfg.get("scale"), 1.0)
            .ok_or_else(|| self.err(c, "scale is not a number or a list of numbers"))?;
        let offset = numbers(c.cfg.get("offset"), 0.0)
            .ok_or_else(|| self.err(c, "offset is not a number or a list of numbers"))?;
        Ok(Rescale {
            layer: c.name.to_string(),
            class: c.class.to_string(),
            scale,
            offset,
        })
    }

    /// A `Normalization` layer as `x·scale + offset`: `(x − mean)/max(√var, 1e-7)`, or with
    /// `invert` `x·max(√var, 1e-7) + mean` (Keras' formulas, its epsilon 1e-7). Mean and variance
    /// come from the config (`mean=`, `variance=`) or from the weights (adapted layers).
    fn normalization(&mut self, c: &Ctx, x: &Tensor) -> Result<Rescale, ImportError> {
        let rank = x.shape.len() as i64 + 1;
        let axis: Vec<i64> = match c.cfg.get("axis") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_i64).collect(),
            Some(v) => v.as_i64().into_iter().collect(),
        };
        if axis.len() != 1 || (axis[0] != -1 && axis[0] != rank - 1) {
            return Err(self.err(
                c,
                format!("axis {axis:?} is not supported (only the last axis, -1)"),
            ));
        }
        let given = |k: &str| numbers(c.cfg.get(k).filter(|v| !v.is_null()), f32::NAN);
        let (mean, var) = match (given("mean"), given("variance")) {
            (Some(m), Some(v)) if !m[0].is_nan() && !v[0].is_nan() => (m, v),
            _ => {
                let w = self.take_weights(c, 3)?;
                let flat = |a: &ArrayD<f32>| a.iter().copied().collect::<Vec<f32>>();
                (flat(&w[0]), flat(&w[1]))
            }
        };
        if mean.is_empty() || var.is_empty() {
            return Err(self.err(c, "mean and variance must not be empty"));
        }
        let sd: Vec<f32> = var.iter().map(|&v| v.sqrt().max(1e-7)).collect();
        let invert = c
            .cfg
            .get("invert")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let r = if invert {
            Rescale {
                layer: c.name.to_string(),
                class: c.class.to_string(),
                scale: sd,
                offset: mean,
            }
        } else {
            let shift = Rescale {
                layer: c.name.to_string(),
                class: c.class.to_string(),
                scale: vec![1.0],
                offset: mean.iter().map(|m| -m).collect(),
            };
            let div = Rescale {
                scale: sd.iter().map(|s| 1.0 / s).collect(),
                offset: vec![0.0],
                ..shift.clone()
            };
            shift.then(&div).map_err(|m| self.err(c, m))?
        };
        Ok(r)
    }

    /// A Keras depthwise kernel `[kh, kw, C, m]` as an IR grouped-conv weight `[C·m, 1, kh, kw]`
    /// (output channel `c·m + j`, as Keras orders them).
    fn depthwise_weight(
        &self,
        c: &Ctx,
        kernel: ArrayD<f32>,
        ch: usize,
        m: usize,
        k: [usize; 2],
    ) -> Result<ArrayD<f32>, ImportError> {
        kernel
            .permuted_axes(IxDyn(&[2, 3, 0, 1]))
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order(IxDyn(&[ch * m, 1, k[0], k[1]]))
            .map_err(|e| self.err(c, e.to_string()))
    }

    /// Folds `x·s + o` into a Keras kernel `[..., C, out]` and bias: `W' = W·s` (per input
    /// channel), `b' = b + Σ W·o` over everything but the output axis. Exact as long as the
    /// layer does not zero-pad its input (the caller checks).
    fn fold_rescale(
        &self,
        c: &Ctx,
        r: &Rescale,
        kernel: ArrayD<f32>,
        bias: Option<ArrayD<f32>>,
        channels: usize,
    ) -> Result<(ArrayD<f32>, Option<ArrayD<f32>>), ImportError> {
        for (what, v) in [("scale", &r.scale), ("offset", &r.offset)] {
            if v.len() != 1 && v.len() != channels {
                return Err(self.err(
                    c,
                    format!(
                        "the Rescaling '{}' has {} {what} values, this layer has {channels} input channels",
                        r.layer,
                        v.len()
                    ),
                ));
            }
        }
        let shape = kernel.shape().to_vec();
        let out = *shape.last().expect("kernel has axes");
        let cin = shape[shape.len() - 2];
        let at = |v: &[f32], i: usize| if v.len() == 1 { v[0] } else { v[i] };
        let mut acc = vec![0f64; out];
        let mut w = kernel.as_standard_layout().into_owned();
        for (idx, x) in w.iter_mut().enumerate() {
            let o = idx % out;
            let ci = (idx / out) % cin;
            acc[o] += f64::from(*x) * f64::from(at(&r.offset, ci));
            *x *= at(&r.scale, ci);
        }
        let bias = if r.offset.iter().any(|&o| o != 0.0) {
            let mut b = bias.unwrap_or_else(|| ArrayD::zeros(IxDyn(&[out])));
            for (bi, a) in b.iter_mut().zip(&acc) {
                *bi = (f64::from(*bi) + a) as f32;
            }
            Some(b)
        } else {
            bias
        };
        Ok((w, bias))
    }

    /// Pads (top, left, bottom, right) for Keras' `padding` of a window op.
    fn padding(
        &self,
        c: &Ctx,
        input: [usize; 2],
        k: [usize; 2],
        s: [usize; 2],
        d: [usize; 2],
    ) -> Result<[usize; 4], ImportError> {
        match c
            .cfg
            .get("padding")
            .and_then(Value::as_str)
            .unwrap_or("valid")
        {
            "valid" => Ok([0; 4]),
            "same" => {
                let mut begin = [0; 2];
                let mut end = [0; 2];
                for i in 0..2 {
                    let (n, k, s, d) = (input[i], k[i], s[i].max(1), d[i]);
                    let out = n.div_ceil(s);
                    let need = (out.saturating_sub(1)) * s + (k.saturating_sub(1)) * d + 1;
                    let total = need.saturating_sub(n);
                    begin[i] = total / 2;
                    end[i] = total - total / 2;
                }
                Ok([begin[0], begin[1], end[0], end[1]])
            }
            other => Err(self.err(c, format!("padding '{other}' is not supported"))),
        }
    }
}

/// Whether a layer class is a nested model.
fn is_model_class(class: &str) -> bool {
    matches!(class, "Sequential" | "Functional" | "Model")
}

/// Collects the unsupported layers of `model` and of its nested models.
fn unsupported_layers(
    model: &Value,
    scope: &str,
    bad: &mut Vec<String>,
    first: &mut Option<(String, String)>,
) {
    let layers = model
        .get("config")
        .and_then(|c| c.get("layers"))
        .and_then(Value::as_array);
    for l in layers.into_iter().flatten() {
        let lc = l.get("class_name").and_then(Value::as_str).unwrap_or("?");
        let name = format!("{scope}{}", layer_name(l));
        if is_model_class(lc) {
            unsupported_layers(l, &format!("{name}/"), bad, first);
        } else if !SUPPORTED_LAYERS.contains(&lc) {
            match unsupported_reason(lc) {
                Some(why) => bad.push(format!("'{name}' ({lc}: {why})")),
                None => bad.push(format!("'{name}' ({lc})")),
            }
            first.get_or_insert((name, lc.to_string()));
        }
    }
}

/// Whether a pending `x·scale + offset` folds exactly into the layer that reads it: a Dense,
/// a Conv2D that does not zero-pad its input (or an offset of 0; per-channel values only without
/// groups), or the next Rescaling/Normalization.
fn can_fold(class: &str, cfg: &Value, inputs: usize, r: &Rescale) -> bool {
    if inputs != 1 {
        return false;
    }
    match class {
        "Dense" | "Rescaling" | "Normalization" => true,
        "Conv2D" => {
            let no_pad = cfg.get("padding").and_then(Value::as_str) != Some("same")
                || pair(cfg.get("kernel_size")) == Some([1, 1]);
            let groups = cfg.get("groups").and_then(Value::as_u64).unwrap_or(1);
            let scalar = r.scale.len() == 1 && r.offset.len() == 1;
            (no_pad || r.offset.iter().all(|&o| o == 0.0)) && (groups == 1 || scalar)
        }
        _ => false,
    }
}

/// A number or a non-empty list of numbers (`default` when absent).
fn numbers(v: Option<&Value>, default: f32) -> Option<Vec<f32>> {
    match v {
        None | Some(Value::Null) => Some(vec![default]),
        Some(Value::Number(n)) => Some(vec![n.as_f64()? as f32]),
        Some(Value::Array(a)) if !a.is_empty() => {
            a.iter().map(|v| v.as_f64().map(|f| f as f32)).collect()
        }
        _ => None,
    }
}

fn layer_name(l: &Value) -> String {
    l.get("name")
        .or_else(|| l.get("config").and_then(|c| c.get("name")))
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_string()
}

/// The per-sample input shape from `batch_shape` (Keras 3) or `batch_input_shape` (Keras 2).
fn batch_shape(cfg: &Value) -> Option<Vec<usize>> {
    let a = cfg
        .get("batch_shape")
        .or_else(|| cfg.get("batch_input_shape"))?
        .as_array()?;
    a.iter()
        .skip(1)
        .map(|v| v.as_u64().map(|d| d as usize))
        .collect()
}

fn pair(v: Option<&Value>) -> Option<[usize; 2]> {
    match v? {
        Value::Array(a) if a.len() == 2 => Some([a[0].as_u64()? as usize, a[1].as_u64()? as usize]),
        Value::Number(n) => {
            let n = n.as_u64()? as usize;
            Some([n, n])
        }
        _ => None,
    }
}

fn zero_padding(v: &Value) -> Option<[[usize; 2]; 2]> {
    match v {
        Value::Number(_) => {
            let [n, _] = pair(Some(v))?;
            Some([[n, n], [n, n]])
        }
        Value::Array(a) if a.len() == 2 => {
            let one = |x: &Value| -> Option<[usize; 2]> {
                match x {
                    Value::Number(n) => {
                        let n = n.as_u64()? as usize;
                        Some([n, n])
                    }
                    other => pair(Some(other)),
                }
            };
            Some([one(&a[0])?, one(&a[1])?])
        }
        _ => None,
    }
}

/// An activation given as a string or (Keras 3) as a serialised object.
fn activation_name(v: Option<&Value>) -> Result<String, String> {
    match v {
        None | Some(Value::Null) => Ok("linear".into()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => other
            .get("config")
            .and_then(|c| c.get("name"))
            .or_else(|| other.get("class_name"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("activation {other} is not supported")),
    }
}

/// Collects the names of the layers feeding one inbound node, in order: Keras 3 tensors
/// (`keras_history`) and Keras 2 `[layer, node, tensor, kwargs]` entries.
fn collect_inbound(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(h) = m.get("keras_history").and_then(Value::as_array) {
                if let Some(n) = h.first().and_then(Value::as_str) {
                    out.push(n.to_string());
                }
                return;
            }
            for key in ["args", "config"] {
                if let Some(x) = m.get(key) {
                    collect_inbound(x, out);
                }
            }
        }
        Value::Array(a) => {
            if let (Some(Value::String(n)), Some(Value::Number(_))) = (a.first(), a.get(1)) {
                out.push(n.clone());
                return;
            }
            for x in a {
                collect_inbound(x, out);
            }
        }
        _ => {}
    }
}

/// The first layer named by `output_layers`: `[name, 0, 0]` or `[[name, 0, 0], ...]`.
fn first_layer_ref(v: &Value) -> Option<String> {
    let a = v.as_array()?;
    match a.first()? {
        Value::String(s) => Some(s.clone()),
        Value::Array(inner) => inner.first()?.as_str().map(str::to_string),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn inbound_nodes_of_both_formats() {
        let k3 = json!({"args": [[
            {"class_name": "__keras_tensor__", "config": {"keras_history": ["a", 0, 0]}},
            {"class_name": "__keras_tensor__", "config": {"keras_history": ["b", 0, 0]}}
        ]], "kwargs": {}});
        let mut v = Vec::new();
        collect_inbound(&k3, &mut v);
        assert_eq!(v, ["a", "b"]);
        let k2 = json!([["a", 0, 0, {}], ["c", 0, 0, {}]]);
        let mut v = Vec::new();
        collect_inbound(&k2, &mut v);
        assert_eq!(v, ["a", "c"]);
        assert_eq!(first_layer_ref(&json!(["out", 0, 0])).unwrap(), "out");
        assert_eq!(first_layer_ref(&json!([["out", 0, 0]])).unwrap(), "out");
    }

    #[test]
    fn zero_padding_forms() {
        assert_eq!(zero_padding(&json!(2)), Some([[2, 2], [2, 2]]));
        assert_eq!(zero_padding(&json!([1, 3])), Some([[1, 1], [3, 3]]));
        assert_eq!(
            zero_padding(&json!([[1, 0], [0, 2]])),
            Some([[1, 0], [0, 2]])
        );
    }

    /// A Keras 2 style Functional config: `(name, class, config, inputs)` per layer, the last
    /// one the output; `input` is an InputLayer of shape (6, 6, 3).
    fn functional(layers: &[(&str, &str, Value, &[&str])]) -> Value {
        let mut out = vec![json!({"class_name": "InputLayer", "name": "input",
            "config": {"name": "input", "batch_input_shape": [null, 6, 6, 3]}, "inbound_nodes": []})];
        for (name, class, cfg, ins) in layers {
            let mut cfg = cfg.clone();
            cfg["name"] = json!(name);
            let refs: Vec<Value> = ins.iter().map(|i| json!([i, 0, 0, {}])).collect();
            out.push(json!({"class_name": class, "name": name, "config": cfg,
                "inbound_nodes": [refs]}));
        }
        let last = layers.last().map_or("input", |l| l.0);
        json!({"class_name": "Functional",
            "config": {"layers": out, "output_layers": [[last, 0, 0]]}})
    }

    fn conv_weights(names: &[&str]) -> LayerWeights {
        names
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    vec![
                        ArrayD::from_elem(IxDyn(&[3, 3, 3, 2]), 1.0),
                        ArrayD::from_elem(IxDyn(&[2]), 0.5),
                    ],
                )
            })
            .collect()
    }

    fn import(model: &Value, weights: LayerWeights) -> Result<Imported, String> {
        Builder::new(Path::new("t.h5"), weights)
            .convert(model, "t")
            .map_err(|e| e.to_string())
    }

    fn conv(padding: &str) -> Value {
        json!({"filters": 2, "kernel_size": [3, 3], "padding": padding, "activation": "linear"})
    }

    #[test]
    fn rescaling_folds_only_where_exact() {
        let r = |s: f64, o: f64| json!({"scale": s, "offset": o});
        // Offset into a 'valid' conv and pure scale into a 'same' conv fold.
        for (o, pad) in [(1.0, "valid"), (0.0, "same")] {
            let m = functional(&[
                ("rs", "Rescaling", r(2.0, o), &["input"]),
                ("c", "Conv2D", conv(pad), &["rs"]),
            ]);
            let g = import(&m, conv_weights(&["c"])).unwrap().graph;
            assert!(g.node_id("rs").is_none());
            let params = &g.nodes()[g.node_id("c").unwrap()].params;
            let w = g.weights().get(&params["weight"]).unwrap();
            assert!(w.iter().all(|&v| v == 2.0));
            let b = g.weights().get(&params["bias"]).unwrap();
            // b' = 0.5 + Σ W·o over the 3×3×3 window.
            assert!(b.iter().all(|&v| v == 0.5 + 27.0 * o as f32), "{b:?}");
        }
        let affine = |g: &lrp_ir::Graph, name: &str| -> (Vec<f32>, Vec<f32>) {
            let n = &g.nodes()[g.node_id(name).unwrap_or_else(|| panic!("no node {name}"))];
            assert_eq!(n.op, Op::BatchNorm { epsilon: 0.0 });
            let get = |p: &str| -> Vec<f32> {
                g.weights()
                    .get(&n.params[p])
                    .unwrap()
                    .iter()
                    .copied()
                    .collect()
            };
            assert!(get("mean").iter().all(|&v| v == 0.0));
            assert!(get("var").iter().all(|&v| v == 1.0));
            (get("scale"), get("bias"))
        };
        // A non-zero offset before zero padding, a consumer that is no Conv2D/Dense, two
        // consumers, or the model's output: an affine BatchNorm node of its own.
        let cases: Vec<(Value, LayerWeights)> = vec![
            (
                functional(&[
                    ("rs", "Rescaling", r(2.0, 1.0), &["input"]),
                    ("c", "Conv2D", conv("same"), &["rs"]),
                ]),
                conv_weights(&["c"]),
            ),
            (
                functional(&[
                    ("rs", "Rescaling", r(2.0, 1.0), &["input"]),
                    ("relu", "ReLU", json!({}), &["rs"]),
                ]),
                LayerWeights::new(),
            ),
            (
                functional(&[
                    ("rs", "Rescaling", r(2.0, 1.0), &["input"]),
                    ("c", "Conv2D", conv("valid"), &["rs"]),
                    ("d", "Conv2D", conv("valid"), &["rs"]),
                    ("add", "Add", json!({}), &["c", "d"]),
                ]),
                conv_weights(&["c", "d"]),
            ),
            (
                functional(&[("rs", "Rescaling", r(2.0, 1.0), &["input"])]),
                LayerWeights::new(),
            ),
        ];
        for (m, w) in cases {
            let g = import(&m, w).unwrap().graph;
            assert_eq!(affine(&g, "rs"), (vec![2.0; 3], vec![1.0; 3]));
        }
        // Rescaling then Normalization compose into one x·s + o.
        let m = functional(&[
            ("rs", "Rescaling", r(0.5, 0.0), &["input"]),
            (
                "norm",
                "Normalization",
                json!({"axis": [-1], "mean": [1.0, 2.0, 3.0], "variance": [4.0, 1.0, 0.25]}),
                &["rs"],
            ),
            ("relu", "ReLU", json!({}), &["norm"]),
        ]);
        let g = import(&m, LayerWeights::new()).unwrap().graph;
        assert!(g.node_id("rs").is_none());
        // (0.5x − m)/σ: scale 0.5/σ, offset −m/σ.
        assert_eq!(
            affine(&g, "norm"),
            (vec![0.25, 0.5, 1.0], vec![-0.5, -2.0, -6.0])
        );
        let inv = functional(&[(
            "norm",
            "Normalization",
            json!({"axis": -1, "mean": 1.0, "variance": 4.0, "invert": true}),
            &["input"],
        )]);
        let g = import(&inv, LayerWeights::new()).unwrap().graph;
        assert_eq!(affine(&g, "norm"), (vec![2.0; 3], vec![1.0; 3]));
        let bad_axis = functional(&[(
            "norm",
            "Normalization",
            json!({"axis": [1], "mean": 1.0, "variance": 4.0}),
            &["input"],
        )]);
        let e = import(&bad_axis, LayerWeights::new()).unwrap_err();
        assert!(e.contains("'norm'") && e.contains("axis"), "{e}");
    }

    #[test]
    fn crop_elu_selu_and_unsupported_activations() {
        let m = functional(&[(
            "crop",
            "Cropping2D",
            json!({"cropping": [[1, 0], [2, 1]]}),
            &["input"],
        )]);
        let g = import(&m, LayerWeights::new()).unwrap().graph;
        let id = g.node_id("crop").unwrap();
        assert_eq!(
            g.nodes()[id].op,
            Op::Crop {
                crops: vec![0, 0, 1, 2, 0, 0, 0, 1]
            }
        );
        assert_eq!(g.shape(id), &[3, 5, 3]);
        for (act, op) in [
            ("elu", Op::Elu { alpha: 1.0 }),
            (
                "selu",
                Op::Selu {
                    alpha: 1.673_263_2,
                    gamma: 1.050_701,
                },
            ),
            ("leaky_relu", Op::LeakyRelu { alpha: 0.2 }),
        ] {
            let m = functional(&[("a", "Activation", json!({ "activation": act }), &["input"])]);
            let g = import(&m, LayerWeights::new()).unwrap().graph;
            assert_eq!(g.nodes()[g.node_id("a").unwrap()].op, op);
        }
        let m = functional(&[("a", "Activation", json!({"activation": "gelu"}), &["input"])]);
        let e = import(&m, LayerWeights::new()).unwrap_err();
        assert!(e.contains("gelu") && e.contains("no matching op"), "{e}");
    }

    #[test]
    fn nested_models_are_inlined_with_scoped_names() {
        let inner = json!({"class_name": "Sequential", "name": "blk",
            "config": {"name": "blk", "layers": [
                {"class_name": "InputLayer", "config": {"name": "in2", "batch_input_shape": [null, 6, 6, 3]}},
                {"class_name": "Conv2D", "config": {"name": "c", "filters": 2, "kernel_size": [3, 3], "padding": "valid"}},
                {"class_name": "Lambda", "config": {"name": "lam"}}
            ]},
            "inbound_nodes": [[["input", 0, 0, {}]]]});
        let mut m = functional(&[]);
        m["config"]["layers"].as_array_mut().unwrap().push(inner);
        m["config"]["output_layers"] = json!([["blk", 0, 0]]);
        let e = import(&m, LayerWeights::new()).unwrap_err();
        assert!(e.contains("'blk/lam' (Lambda"), "{e}");
        m["config"]["layers"][1]["config"]["layers"]
            .as_array_mut()
            .unwrap()
            .pop();
        // tf_keras .h5 files key the nested weights by outer model and layer.
        let g = import(&m, conv_weights(&["blk/c"])).unwrap().graph;
        let id = g.node_id("blk/c").unwrap();
        assert_eq!(g.shape(id), &[2, 4, 4]);
        assert_eq!(g.output_id(), id);
    }

    #[test]
    fn h5_weight_owners() {
        assert_eq!(h5_weight_owner("conv1", "seq_cnn/conv1/kernel"), "conv1");
        assert_eq!(h5_weight_owner("conv1", "conv1/kernel:0"), "conv1");
        assert_eq!(h5_weight_owner("norm", "mean:0"), "norm");
        assert_eq!(h5_weight_owner("blk", "blk/c1/kernel"), "blk/c1");
        assert_eq!(h5_weight_owner("blk", "blk/inner/c2/bias"), "blk/inner/c2");
        assert_eq!(h5_weight_owner("blk", "c2/kernel:0"), "blk/c2");
    }

    #[test]
    fn activations_as_strings_or_objects() {
        assert_eq!(activation_name(Some(&json!("relu"))).unwrap(), "relu");
        assert_eq!(activation_name(None).unwrap(), "linear");
        assert_eq!(
            activation_name(Some(
                &json!({"class_name": "function", "config": {"name": "tanh"}})
            ))
            .unwrap(),
            "tanh"
        );
    }
}
