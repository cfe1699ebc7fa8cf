//! Operators of the graph IR, their parameters and their shape inference.
//!
//! Every tensor has a leading batch axis that is left dynamic. Shapes in this module are
//! *per-sample* shapes (the batch axis removed); axis numbers in attributes count the batch axis
//! as axis 0, as ONNX does. Convolutions and pools work on NCHW tensors.

use serde::{Deserialize, Serialize};

/// A per-sample tensor shape (the batch axis excluded).
pub type Shape = Vec<usize>;

/// One operator with its attributes.
///
/// Parameter tensors (weights) are not stored here but named in the node's `params` map; see
/// [`Op::params`] for the names each operator takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub enum Op {
    /// 2-D convolution, NCHW. Params: `weight` `[O, C/groups, kh, kw]`, optional `bias` `[O]`.
    Conv {
        /// Kernel height and width.
        kernel: [usize; 2],
        /// Strides along H and W.
        strides: [usize; 2],
        /// Zero padding: top, left, bottom, right.
        pads: [usize; 4],
        /// Dilations along H and W.
        dilations: [usize; 2],
        /// Number of groups (`C` for depthwise).
        groups: usize,
    },
    /// Fully connected layer on `[N, in]`: `y = x Wᵀ + b`. Params: `weight` `[out, in]`,
    /// optional `bias` `[out]`.
    Dense,
    /// `max(x, 0)`.
    Relu,
    /// `x` where `x ≥ 0`, `alpha·x` elsewhere.
    LeakyRelu {
        /// Slope for negative inputs.
        alpha: f32,
    },
    /// `x` where `x > alpha`, 0 elsewhere (ONNX `ThresholdedRelu`, Keras' `ReLU(threshold)`).
    ThresholdedRelu {
        /// The threshold.
        alpha: f32,
    },
    /// `x` where `x > 0`, `alpha·(eˣ − 1)` elsewhere.
    Elu {
        /// Scale of the negative branch.
        alpha: f32,
    },
    /// `gamma·x` where `x > 0`, `gamma·alpha·(eˣ − 1)` elsewhere.
    Selu {
        /// Scale of the negative branch before `gamma`.
        alpha: f32,
        /// Overall scale.
        gamma: f32,
    },
    /// Logistic sigmoid.
    Sigmoid,
    /// Hyperbolic tangent.
    Tanh,
    /// `min(max(x, min), max)` (ReLU6 is `Clip(min: 0, max: 6)`).
    Clip {
        /// Lower bound.
        min: f32,
        /// Upper bound.
        max: f32,
    },
    /// 2-D max pooling, NCHW; padding never wins.
    MaxPool {
        /// Window height and width.
        kernel: [usize; 2],
        /// Strides along H and W.
        strides: [usize; 2],
        /// Padding: top, left, bottom, right.
        pads: [usize; 4],
        /// Dilations along H and W.
        dilations: [usize; 2],
        /// Output size rounds up instead of down.
        ceil_mode: bool,
    },
    /// 2-D average pooling, NCHW.
    AvgPool {
        /// Window height and width.
        kernel: [usize; 2],
        /// Strides along H and W.
        strides: [usize; 2],
        /// Padding: top, left, bottom, right.
        pads: [usize; 4],
        /// Padded positions count in the divisor.
        count_include_pad: bool,
        /// Output size rounds up instead of down.
        ceil_mode: bool,
    },
    /// Mean over H and W: `[C, H, W]` → `[C, 1, 1]`.
    GlobalAvgPool,
    /// Max over H and W: `[C, H, W]` → `[C, 1, 1]`.
    GlobalMaxPool,
    /// All non-batch axes into one, in row-major order.
    Flatten,
    /// Row-major reshape to a per-sample `shape`.
    Reshape {
        /// The per-sample target shape.
        shape: Vec<usize>,
    },
    /// Axis permutation; `perm` covers the batch axis, which must stay first (`perm[0] == 0`).
    Transpose {
        /// Output axis `i` is input axis `perm[i]`.
        perm: Vec<usize>,
    },
    /// Removes axes of size 1 (axis numbers count the batch axis; 0 is not allowed).
    Squeeze {
        /// Axes to remove.
        axes: Vec<usize>,
    },
    /// Inserts axes of size 1 (positions in the output; 0 is not allowed).
    Unsqueeze {
        /// Positions of the new axes in the output.
        axes: Vec<usize>,
    },
    /// Inference-mode batch normalisation over axis 1:
    /// `(x − mean)/√(var + epsilon)·scale + bias`. Params: `scale`, `bias`, `mean`, `var`, each `[C]`.
    BatchNorm {
        /// Added to the variance.
        epsilon: f32,
    },
    /// Element-wise sum of two or more inputs of equal shape.
    Add,
    /// Concatenation along `axis` (≥ 1).
    Concat {
        /// The axis, counting the batch axis as 0.
        axis: usize,
    },
    /// Constant-zero padding; `pads` as ONNX: all begins, then all ends, over every axis
    /// including the batch axis (whose entries must be 0).
    Pad {
        /// Begin and end padding per axis.
        pads: Vec<usize>,
    },
    /// Removes elements at the borders; `crops` as [`Op::Pad`]'s `pads`: all begins, then all
    /// ends, over every axis including the batch axis (whose entries must be 0).
    Crop {
        /// Begin and end crop per axis.
        crops: Vec<usize>,
    },
    /// Softmax along `axis` (≥ 1).
    Softmax {
        /// The axis, counting the batch axis as 0.
        axis: usize,
    },
    /// Identity at inference.
    Dropout,
    /// Identity.
    Identity,
}

/// How a parameter tensor of an op is used: its name and whether it must be present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamSpec {
    /// Key in the node's `params` map.
    pub name: &'static str,
    /// Whether the op needs it.
    pub required: bool,
}

const fn req(name: &'static str) -> ParamSpec {
    ParamSpec {
        name,
        required: true,
    }
}
const fn opt(name: &'static str) -> ParamSpec {
    ParamSpec {
        name,
        required: false,
    }
}

/// Shape of a parameter tensor as the shape inference sees it.
pub trait ParamShapes {
    /// The shape of parameter `name`, if the node has it.
    fn param_shape(&self, name: &str) -> Option<&[usize]>;
}

impl Op {
    /// Whether the op only moves values of its one input: reshapes, transposes, crops, pads
    /// with zeros, or passes them on (Identity, Dropout at inference). Its output holds the
    /// input's values and, for a pad, zeros.
    pub fn is_shape_only(&self) -> bool {
        matches!(
            self,
            Op::Flatten
                | Op::Reshape { .. }
                | Op::Transpose { .. }
                | Op::Squeeze { .. }
                | Op::Unsqueeze { .. }
                | Op::Pad { .. }
                | Op::Crop { .. }
                | Op::Identity
                | Op::Dropout
        )
    }

    /// Whether the op is element-wise with `f(0) = 0`: a zero input value is a zero output
    /// value at the same position (ReLU and its variants, ELU, SELU, tanh, and Identity and
    /// Dropout at inference). Not Sigmoid (`f(0) = 1/2`) or Clip (whose range may leave out 0).
    pub fn keeps_zeros(&self) -> bool {
        matches!(
            self,
            Op::Relu
                | Op::LeakyRelu { .. }
                | Op::ThresholdedRelu { .. }
                | Op::Elu { .. }
                | Op::Selu { .. }
                | Op::Tanh
                | Op::Identity
                | Op::Dropout
        )
    }

    /// The op's tag as written in RON (`"Conv"`, `"Dense"`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Conv { .. } => "Conv",
            Op::Dense => "Dense",
            Op::Relu => "Relu",
            Op::LeakyRelu { .. } => "LeakyRelu",
            Op::ThresholdedRelu { .. } => "ThresholdedRelu",
            Op::Elu { .. } => "Elu",
            Op::Selu { .. } => "Selu",
            Op::Sigmoid => "Sigmoid",
            Op::Tanh => "Tanh",
            Op::Clip { .. } => "Clip",
            Op::MaxPool { .. } => "MaxPool",
            Op::AvgPool { .. } => "AvgPool",
            Op::GlobalAvgPool => "GlobalAvgPool",
            Op::GlobalMaxPool => "GlobalMaxPool",
            Op::Flatten => "Flatten",
            Op::Reshape { .. } => "Reshape",
            Op::Transpose { .. } => "Transpose",
            Op::Squeeze { .. } => "Squeeze",
            Op::Unsqueeze { .. } => "Unsqueeze",
            Op::BatchNorm { .. } => "BatchNorm",
            Op::Add => "Add",
            Op::Concat { .. } => "Concat",
            Op::Pad { .. } => "Pad",
            Op::Crop { .. } => "Crop",
            Op::Softmax { .. } => "Softmax",
            Op::Dropout => "Dropout",
            Op::Identity => "Identity",
        }
    }

    /// The parameter tensors this op reads.
    pub fn params(&self) -> &'static [ParamSpec] {
        const CONV: &[ParamSpec] = &[req("weight"), opt("bias")];
        const BN: &[ParamSpec] = &[req("scale"), req("bias"), req("mean"), req("var")];
        match self {
            Op::Conv { .. } | Op::Dense => CONV,
            Op::BatchNorm { .. } => BN,
            _ => &[],
        }
    }

    /// How many inputs the op takes: `(min, max)`.
    pub fn arity(&self) -> (usize, usize) {
        match self {
            Op::Add => (2, usize::MAX),
            Op::Concat { .. } => (1, usize::MAX),
            _ => (1, 1),
        }
    }

    /// Infers the per-sample output shape from the per-sample input shapes and the parameter
    /// shapes, checking attributes and parameters on the way. The error is a message without
    /// the node's name (the caller adds it).
    pub fn infer_shape(
        &self,
        inputs: &[&[usize]],
        params: &dyn ParamShapes,
    ) -> Result<Shape, String> {
        let (lo, hi) = self.arity();
        if inputs.len() < lo || inputs.len() > hi {
            return Err(if lo == hi {
                format!("takes {lo} input(s), got {}", inputs.len())
            } else {
                format!("takes at least {lo} inputs, got {}", inputs.len())
            });
        }
        for spec in self.params() {
            if spec.required && params.param_shape(spec.name).is_none() {
                return Err(format!("missing parameter '{}'", spec.name));
            }
        }
        let x = inputs[0];
        match self {
            Op::Conv {
                kernel,
                strides,
                pads,
                dilations,
                groups,
            } => {
                let [c, h, w] = rank3(x, "Conv")?;
                check_window(kernel, strides, dilations)?;
                let g = *groups;
                if g == 0 || !c.is_multiple_of(g) {
                    return Err(format!(
                        "groups = {g} does not divide the {c} input channels"
                    ));
                }
                let ws = params.param_shape("weight").unwrap_or_default();
                if ws.len() != 4 || ws[1] != c / g || ws[2] != kernel[0] || ws[3] != kernel[1] {
                    return Err(format!(
                        "weight has shape {ws:?}, expected [out, {}, {}, {}]",
                        c / g,
                        kernel[0],
                        kernel[1]
                    ));
                }
                let o = ws[0];
                if o == 0 || !o.is_multiple_of(g) {
                    return Err(format!(
                        "{o} output channels are not divisible by groups = {g}"
                    ));
                }
                check_bias(params, o)?;
                let oh = window_out(
                    h,
                    kernel[0],
                    strides[0],
                    pads[0],
                    pads[2],
                    dilations[0],
                    false,
                )?;
                let ow = window_out(
                    w,
                    kernel[1],
                    strides[1],
                    pads[1],
                    pads[3],
                    dilations[1],
                    false,
                )?;
                Ok(vec![o, oh, ow])
            }
            Op::Dense => {
                if x.len() != 1 {
                    return Err(format!(
                        "input must be [N, features], got per-sample shape {x:?}"
                    ));
                }
                let ws = params.param_shape("weight").unwrap_or_default();
                if ws.len() != 2 || ws[1] != x[0] {
                    return Err(format!("weight has shape {ws:?}, expected [out, {}]", x[0]));
                }
                check_bias(params, ws[0])?;
                Ok(vec![ws[0]])
            }
            Op::Relu | Op::Sigmoid | Op::Tanh | Op::Dropout | Op::Identity => Ok(x.to_vec()),
            Op::LeakyRelu { alpha } | Op::Elu { alpha } | Op::ThresholdedRelu { alpha } => {
                if !alpha.is_finite() {
                    return Err(format!("alpha = {alpha} is not finite"));
                }
                Ok(x.to_vec())
            }
            Op::Selu { alpha, gamma } => {
                if !alpha.is_finite() || !gamma.is_finite() {
                    return Err(format!(
                        "alpha = {alpha} and gamma = {gamma} must be finite"
                    ));
                }
                Ok(x.to_vec())
            }
            Op::Clip { min, max } => {
                if min.is_nan() || max.is_nan() || min > max {
                    return Err(format!("min = {min} must not exceed max = {max}"));
                }
                Ok(x.to_vec())
            }
            Op::MaxPool {
                kernel,
                strides,
                pads,
                dilations,
                ceil_mode,
            } => {
                let [c, h, w] = rank3(x, "MaxPool")?;
                check_window(kernel, strides, dilations)?;
                check_pool_pads(kernel, pads)?;
                let oh = window_out(
                    h,
                    kernel[0],
                    strides[0],
                    pads[0],
                    pads[2],
                    dilations[0],
                    *ceil_mode,
                )?;
                let ow = window_out(
                    w,
                    kernel[1],
                    strides[1],
                    pads[1],
                    pads[3],
                    dilations[1],
                    *ceil_mode,
                )?;
                Ok(vec![c, oh, ow])
            }
            Op::AvgPool {
                kernel,
                strides,
                pads,
                ceil_mode,
                ..
            } => {
                let [c, h, w] = rank3(x, "AvgPool")?;
                check_window(kernel, strides, &[1, 1])?;
                check_pool_pads(kernel, pads)?;
                let oh = window_out(h, kernel[0], strides[0], pads[0], pads[2], 1, *ceil_mode)?;
                let ow = window_out(w, kernel[1], strides[1], pads[1], pads[3], 1, *ceil_mode)?;
                Ok(vec![c, oh, ow])
            }
            Op::GlobalAvgPool | Op::GlobalMaxPool => {
                let [c, _, _] = rank3(x, self.kind())?;
                Ok(vec![c, 1, 1])
            }
            Op::Flatten => Ok(vec![x.iter().product()]),
            Op::Reshape { shape } => {
                let (a, b) = (x.iter().product::<usize>(), shape.iter().product::<usize>());
                if a != b {
                    return Err(format!(
                        "cannot reshape per-sample shape {x:?} ({a} values) to {shape:?} ({b} values)"
                    ));
                }
                Ok(shape.clone())
            }
            Op::Transpose { perm } => {
                let rank = x.len() + 1;
                let mut seen = vec![false; rank];
                if perm.len() != rank
                    || perm
                        .iter()
                        .any(|&p| p >= rank || std::mem::replace(&mut seen[p], true))
                {
                    return Err(format!(
                        "perm {perm:?} is not a permutation of the {rank} axes"
                    ));
                }
                if perm[0] != 0 {
                    return Err(format!(
                        "perm {perm:?} moves the batch axis (perm[0] must be 0)"
                    ));
                }
                Ok(perm[1..].iter().map(|&p| x[p - 1]).collect())
            }
            Op::Squeeze { axes } => {
                let rank = x.len() + 1;
                let mut sorted = axes.clone();
                sorted.sort_unstable();
                sorted.dedup();
                if sorted.len() != axes.len() || sorted.iter().any(|&a| a == 0 || a >= rank) {
                    return Err(format!("axes {axes:?} must be distinct, in 1..{rank}"));
                }
                for &a in &sorted {
                    if x[a - 1] != 1 {
                        return Err(format!("axis {a} has size {}, not 1", x[a - 1]));
                    }
                }
                Ok(x.iter()
                    .enumerate()
                    .filter(|(i, _)| !sorted.contains(&(i + 1)))
                    .map(|(_, &d)| d)
                    .collect())
            }
            Op::Unsqueeze { axes } => {
                let out_rank = x.len() + 1 + axes.len();
                let mut sorted = axes.clone();
                sorted.sort_unstable();
                sorted.dedup();
                if sorted.len() != axes.len() || sorted.iter().any(|&a| a == 0 || a >= out_rank) {
                    return Err(format!("axes {axes:?} must be distinct, in 1..{out_rank}"));
                }
                let mut rest = x.iter();
                Ok((1..out_rank)
                    .map(|a| {
                        if sorted.contains(&a) {
                            1
                        } else {
                            *rest.next().expect("counted")
                        }
                    })
                    .collect())
            }
            Op::BatchNorm { epsilon } => {
                if x.is_empty() {
                    return Err("input has no channel axis".into());
                }
                if !(epsilon.is_finite() && *epsilon >= 0.0) {
                    return Err(format!("epsilon = {epsilon} must be finite and ≥ 0"));
                }
                for name in ["scale", "bias", "mean", "var"] {
                    let s = params.param_shape(name).unwrap_or_default();
                    if s != [x[0]] {
                        return Err(format!("{name} has shape {s:?}, expected [{}]", x[0]));
                    }
                }
                Ok(x.to_vec())
            }
            Op::Add => {
                for (k, s) in inputs.iter().enumerate().skip(1) {
                    if *s != x {
                        return Err(format!(
                            "inputs must have equal shapes: input 0 is {x:?}, input {k} is {s:?}"
                        ));
                    }
                }
                Ok(x.to_vec())
            }
            Op::Concat { axis } => {
                if *axis == 0 || *axis > x.len() {
                    return Err(format!("axis {axis} must be in 1..={}", x.len()));
                }
                let a = axis - 1;
                let mut out = x.to_vec();
                for (k, s) in inputs.iter().enumerate().skip(1) {
                    let same = s.len() == x.len()
                        && s.iter()
                            .zip(x)
                            .enumerate()
                            .all(|(i, (p, q))| i == a || p == q);
                    if !same {
                        return Err(format!(
                            "input {k} has shape {s:?}, incompatible with {x:?} outside axis {axis}"
                        ));
                    }
                    out[a] += s[a];
                }
                Ok(out)
            }
            Op::Pad { pads } => {
                let rank = x.len() + 1;
                if pads.len() != 2 * rank {
                    return Err(format!(
                        "pads has {} entries, expected {}",
                        pads.len(),
                        2 * rank
                    ));
                }
                if pads[0] != 0 || pads[rank] != 0 {
                    return Err("padding the batch axis is not supported".into());
                }
                Ok(x.iter()
                    .enumerate()
                    .map(|(i, d)| d + pads[i + 1] + pads[rank + i + 1])
                    .collect())
            }
            Op::Crop { crops } => {
                let rank = x.len() + 1;
                if crops.len() != 2 * rank {
                    return Err(format!(
                        "crops has {} entries, expected {}",
                        crops.len(),
                        2 * rank
                    ));
                }
                if crops[0] != 0 || crops[rank] != 0 {
                    return Err("cropping the batch axis is not supported".into());
                }
                x.iter()
                    .enumerate()
                    .map(|(i, &d)| {
                        let c = crops[i + 1] + crops[rank + i + 1];
                        if c >= d {
                            Err(format!(
                                "cropping {c} of {d} elements along axis {} leaves nothing",
                                i + 1
                            ))
                        } else {
                            Ok(d - c)
                        }
                    })
                    .collect()
            }
            Op::Softmax { axis } => {
                if *axis == 0 || *axis > x.len() {
                    return Err(format!("axis {axis} must be in 1..={}", x.len()));
                }
                Ok(x.to_vec())
            }
        }
    }
}

fn rank3(x: &[usize], op: &str) -> Result<[usize; 3], String> {
    match x {
        &[c, h, w] => Ok([c, h, w]),
        _ => Err(format!(
            "{op} needs an NCHW input, got per-sample shape {x:?}"
        )),
    }
}

fn check_window(
    kernel: &[usize; 2],
    strides: &[usize; 2],
    dilations: &[usize; 2],
) -> Result<(), String> {
    if kernel.contains(&0) || strides.contains(&0) || dilations.contains(&0) {
        return Err(format!(
            "kernel {kernel:?}, strides {strides:?} and dilations {dilations:?} must be positive"
        ));
    }
    Ok(())
}

fn check_pool_pads(kernel: &[usize; 2], pads: &[usize; 4]) -> Result<(), String> {
    if pads[0] >= kernel[0] || pads[2] >= kernel[0] || pads[1] >= kernel[1] || pads[3] >= kernel[1]
    {
        return Err(format!(
            "pads {pads:?} must be smaller than the kernel {kernel:?}"
        ));
    }
    Ok(())
}

fn check_bias(params: &dyn ParamShapes, out: usize) -> Result<(), String> {
    match params.param_shape("bias") {
        Some(s) if s != [out] => Err(format!("bias has shape {s:?}, expected [{out}]")),
        _ => Ok(()),
    }
}

/// Output length of a sliding window along one axis, as ONNX defines it (with `ceil_mode`, a
/// last window that would start in the end padding is dropped).
pub fn window_out(
    len: usize,
    kernel: usize,
    stride: usize,
    pad_begin: usize,
    pad_end: usize,
    dilation: usize,
    ceil_mode: bool,
) -> Result<usize, String> {
    let span = dilation * (kernel - 1) + 1;
    let padded = len + pad_begin + pad_end;
    if padded < span {
        return Err(format!(
            "window of extent {span} does not fit an axis of {len} (+{pad_begin}/+{pad_end} padding)"
        ));
    }
    let steps = padded - span;
    let mut out = if ceil_mode {
        steps.div_ceil(stride)
    } else {
        steps / stride
    } + 1;
    if ceil_mode && (out - 1) * stride >= len + pad_begin {
        out -= 1;
    }
    Ok(out)
}

/// A compact one-line form: the op's tag and its non-default attributes, e.g.
/// `Conv 3x3 /2 pad 1,1,1,1 groups 4`.
impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let window = |f: &mut std::fmt::Formatter<'_>,
                      k: &[usize; 2],
                      s: &[usize; 2],
                      p: &[usize; 4],
                      d: &[usize; 2]| {
            write!(f, " {}x{}", k[0], k[1])?;
            if *s != [1, 1] {
                write!(f, " stride {}x{}", s[0], s[1])?;
            }
            if *p != [0; 4] {
                write!(f, " pad {},{},{},{}", p[0], p[1], p[2], p[3])?;
            }
            if *d != [1, 1] {
                write!(f, " dilation {}x{}", d[0], d[1])?;
            }
            Ok(())
        };
        write!(f, "{}", self.kind())?;
        match self {
            Op::Conv {
                kernel,
                strides,
                pads,
                dilations,
                groups,
            } => {
                window(f, kernel, strides, pads, dilations)?;
                if *groups != 1 {
                    write!(f, " groups {groups}")?;
                }
                Ok(())
            }
            Op::MaxPool {
                kernel,
                strides,
                pads,
                dilations,
                ceil_mode,
            } => {
                window(f, kernel, strides, pads, dilations)?;
                if *ceil_mode {
                    write!(f, " ceil")?;
                }
                Ok(())
            }
            Op::AvgPool {
                kernel,
                strides,
                pads,
                count_include_pad,
                ceil_mode,
            } => {
                window(f, kernel, strides, pads, &[1, 1])?;
                if *count_include_pad {
                    write!(f, " count_include_pad")?;
                }
                if *ceil_mode {
                    write!(f, " ceil")?;
                }
                Ok(())
            }
            Op::LeakyRelu { alpha } | Op::Elu { alpha } | Op::ThresholdedRelu { alpha } => {
                write!(f, " alpha {alpha}")
            }
            Op::Selu { alpha, gamma } => write!(f, " alpha {alpha} gamma {gamma}"),
            Op::Clip { min, max } => write!(f, " [{min}, {max}]"),
            Op::Reshape { shape } => write!(f, " {shape:?}"),
            Op::Transpose { perm } => write!(f, " {perm:?}"),
            Op::Squeeze { axes } | Op::Unsqueeze { axes } => write!(f, " axes {axes:?}"),
            Op::BatchNorm { epsilon } => write!(f, " eps {epsilon}"),
            Op::Concat { axis } | Op::Softmax { axis } => write!(f, " axis {axis}"),
            Op::Pad { pads } => write!(f, " {pads:?}"),
            Op::Crop { crops } => write!(f, " {crops:?}"),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct P(Vec<(&'static str, Vec<usize>)>);
    impl ParamShapes for P {
        fn param_shape(&self, name: &str) -> Option<&[usize]> {
            self.0
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, s)| s.as_slice())
        }
    }

    #[test]
    fn conv_shapes() {
        let op = Op::Conv {
            kernel: [3, 3],
            strides: [2, 2],
            pads: [1, 1, 1, 1],
            dilations: [1, 1],
            groups: 1,
        };
        let p = P(vec![("weight", vec![8, 3, 3, 3]), ("bias", vec![8])]);
        assert_eq!(
            op.infer_shape(&[&[3, 32, 31]], &p).unwrap(),
            vec![8, 16, 16]
        );
        let bad = P(vec![("weight", vec![8, 4, 3, 3])]);
        let e = op.infer_shape(&[&[3, 32, 32]], &bad).unwrap_err();
        assert!(e.contains("weight has shape [8, 4, 3, 3]"), "{e}");
        let nobias = P(vec![("weight", vec![8, 3, 3, 3]), ("bias", vec![7])]);
        assert!(
            op.infer_shape(&[&[3, 8, 8]], &nobias)
                .unwrap_err()
                .contains("bias")
        );
    }

    #[test]
    fn depthwise_and_dilation() {
        let op = Op::Conv {
            kernel: [3, 3],
            strides: [1, 1],
            pads: [0, 0, 0, 0],
            dilations: [2, 2],
            groups: 4,
        };
        let p = P(vec![("weight", vec![4, 1, 3, 3])]);
        assert_eq!(op.infer_shape(&[&[4, 10, 9]], &p).unwrap(), vec![4, 6, 5]);
    }

    #[test]
    fn ceil_mode_drops_window_starting_in_padding() {
        // ONNX: 5 wide, k=2, s=2, no pad: floor → 2, ceil → 3.
        assert_eq!(window_out(5, 2, 2, 0, 0, 1, false).unwrap(), 2);
        assert_eq!(window_out(5, 2, 2, 0, 0, 1, true).unwrap(), 3);
        // 4 wide, k=2, s=2, end pad 1: ceil would give 3, but the 3rd window starts at 4 ≥ 4.
        assert_eq!(window_out(4, 2, 2, 0, 1, 1, true).unwrap(), 2);
    }

    #[test]
    fn shape_ops() {
        let none = P(vec![]);
        let t = Op::Transpose {
            perm: vec![0, 2, 3, 1],
        };
        assert_eq!(t.infer_shape(&[&[3, 4, 5]], &none).unwrap(), vec![4, 5, 3]);
        assert!(
            Op::Transpose {
                perm: vec![1, 0, 2, 3]
            }
            .infer_shape(&[&[3, 4, 5]], &none)
            .is_err()
        );
        let u = Op::Unsqueeze { axes: vec![1, 3] };
        assert_eq!(u.infer_shape(&[&[7, 8]], &none).unwrap(), vec![1, 7, 1, 8]);
        let s = Op::Squeeze { axes: vec![2, 3] };
        assert_eq!(s.infer_shape(&[&[7, 1, 1]], &none).unwrap(), vec![7]);
        assert!(s.infer_shape(&[&[7, 2, 1]], &none).is_err());
        let pad = Op::Pad {
            pads: vec![0, 0, 1, 2, 0, 0, 3, 4],
        };
        assert_eq!(
            pad.infer_shape(&[&[3, 5, 6]], &none).unwrap(),
            vec![3, 9, 12]
        );
        let crop = Op::Crop {
            crops: vec![0, 0, 1, 2, 0, 0, 3, 4],
        };
        assert_eq!(
            crop.infer_shape(&[&[3, 5, 16]], &none).unwrap(),
            vec![3, 1, 10]
        );
        let e = crop.infer_shape(&[&[3, 4, 16]], &none).unwrap_err();
        assert!(e.contains("leaves nothing"), "{e}");
        assert!(
            Op::Crop {
                crops: vec![1, 0, 0, 0]
            }
            .infer_shape(&[&[3]], &none)
            .is_err()
        );
        let c = Op::Concat { axis: 1 };
        assert_eq!(
            c.infer_shape(&[&[3, 5, 6], &[2, 5, 6]], &none).unwrap(),
            vec![5, 5, 6]
        );
        assert!(c.infer_shape(&[&[3, 5, 6], &[2, 4, 6]], &none).is_err());
        assert!(
            Op::Reshape { shape: vec![10] }
                .infer_shape(&[&[3, 3]], &none)
                .is_err()
        );
    }
}
