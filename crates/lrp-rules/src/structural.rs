//! Rules of the layers without weights: activations, shape ops, pooling, Add, BatchNorm.

use lrp_ir::Op;
use lrp_kernels::Stabilizer;
use lrp_kernels::kernels::{self, PoolGeometry};
use ndarray::{ArrayD, ArrayView4, ArrayViewD, Axis, Ix4, IxDyn, Slice};
use serde::{Deserialize, Serialize};

use crate::basic::{nonzero_at_zero, stab_text};
use crate::rule::{NodeContext, Rule, ZeroInput, map_rows};

/// `R_in = R_out`: element-wise activations, Dropout, Identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass;

impl Rule for Pass {
    fn relevance(
        &self,
        ctx: &NodeContext<'_>,
        r_out: ArrayViewD<'_, f32>,
    ) -> Result<Vec<ArrayD<f32>>, String> {
        if ctx.inputs.len() != 1 || ctx.inputs[0].shape()[1..] != r_out.shape()[1..] {
            return Err("Pass needs one input of the output's shape".into());
        }
        Ok(vec![r_out.to_owned()])
    }

    fn describe(&self) -> String {
        "Pass".into()
    }

    fn moves_unchanged(&self, ctx: &NodeContext<'_>) -> bool {
        ctx.inputs.len() == 1 && ctx.inputs[0].shape() == ctx.output.shape()
    }

    fn reads_output(&self) -> bool {
        false
    }

    fn reads_inputs(&self) -> bool {
        false
    }

    fn zero_input_relevance(&self, op: &Op) -> ZeroInput {
        if op.keeps_zeros() {
            ZeroInput::IfOutput
        } else {
            ZeroInput::Unknown
        }
    }
}

/// Moves relevance with the values: Flatten, Reshape, Squeeze, Unsqueeze (reshape back),
/// Transpose (inverse permutation), Pad (crop), Crop (zero-pad back), Concat (slice per input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move;

impl Rule for Move {
    fn relevance(
        &self,
        ctx: &NodeContext<'_>,
        r_out: ArrayViewD<'_, f32>,
    ) -> Result<Vec<ArrayD<f32>>, String> {
        let rows = r_out.shape()[0];
        let in_shape = |k: usize| -> Vec<usize> {
            let mut s = vec![rows];
            s.extend_from_slice(&ctx.inputs[k].shape()[1..]);
            s
        };
        match ctx.op() {
            Op::Flatten
            | Op::Reshape { .. }
            | Op::Squeeze { .. }
            | Op::Unsqueeze { .. }
            | Op::Identity
            | Op::Dropout => {
                let r = r_out.as_standard_layout().into_owned();
                Ok(vec![
                    r.into_shape_with_order(IxDyn(&in_shape(0)))
                        .map_err(|e| e.to_string())?,
                ])
            }
            Op::Transpose { perm } => {
                let mut inv = vec![0; perm.len()];
                for (i, &p) in perm.iter().enumerate() {
                    inv[p] = i;
                }
                Ok(vec![
                    r_out
                        .permuted_axes(IxDyn(&inv))
                        .as_standard_layout()
                        .into_owned(),
                ])
            }
            Op::Pad { pads } => {
                let rank = r_out.ndim();
                let mut v = r_out.view();
                for a in 1..rank {
                    let len = v.shape()[a];
                    v.slice_axis_inplace(Axis(a), Slice::from(pads[a]..len - pads[rank + a]));
                }
                Ok(vec![v.to_owned()])
            }
            Op::Crop { crops } => {
                let rank = r_out.ndim();
                let mut r = ArrayD::<f32>::zeros(IxDyn(&in_shape(0)));
                let mut v = r.view_mut();
                for a in 1..rank {
                    let len = v.shape()[a];
                    v.slice_axis_inplace(Axis(a), Slice::from(crops[a]..len - crops[rank + a]));
                }
                v.assign(&r_out);
                Ok(vec![r])
            }
            Op::Concat { axis } => {
                let mut start = 0;
                let mut out = Vec::with_capacity(ctx.inputs.len());
                for x in &ctx.inputs {
                    let len = x.shape()[*axis];
                    out.push(
                        r_out
                            .slice_axis(Axis(*axis), Slice::from(start..start + len))
                            .to_owned(),
                    );
                    start += len;
                }
                Ok(out)
            }
            other => Err(format!("Move does not apply to {}", other.kind())),
        }
    }

    fn describe(&self) -> String {
        "Move".into()
    }

    fn moves_unchanged(&self, ctx: &NodeContext<'_>) -> bool {
        ctx.inputs.len() == 1
            && matches!(
                ctx.op(),
                Op::Flatten
                    | Op::Reshape { .. }
                    | Op::Squeeze { .. }
                    | Op::Unsqueeze { .. }
                    | Op::Identity
                    | Op::Dropout
            )
    }

    fn reads_output(&self) -> bool {
        false
    }

    fn reads_inputs(&self) -> bool {
        false
    }

    fn zero_input_relevance(&self, _op: &Op) -> ZeroInput {
        // Each input value is an output value (or, for Pad, padding): its relevance is the
        // relevance at that output position.
        ZeroInput::IfOutput
    }
}

/// How MaxPool passes relevance down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MaxPoolRouting {
    /// All of `R_j` to the first argmax of window `j` (the gradient).
    WinnerTakeAll,
    /// `R_i = x_i R_j / stab(Σ_window x)`.
    Proportional,
}

/// MaxPool and GlobalMaxPool.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaxPoolRule {
    /// The routing.
    pub routing: MaxPoolRouting,
    /// Stabiliser of `Proportional`.
    pub stabilizer: Stabilizer,
}

impl Rule for MaxPoolRule {
    fn relevance(
        &self,
        ctx: &NodeContext<'_>,
        r_out: ArrayViewD<'_, f32>,
    ) -> Result<Vec<ArrayD<f32>>, String> {
        let (x, r, g) = pool_operands(
            ctx,
            r_out,
            matches!(ctx.op(), Op::MaxPool { .. } | Op::GlobalMaxPool),
            "max-pool",
        )?;
        let out = match self.routing {
            MaxPoolRouting::WinnerTakeAll => kernels::maxpool_winner_take_all(x, r, ctx.maps, &g),
            MaxPoolRouting::Proportional => {
                kernels::maxpool_proportional(x, r, ctx.maps, &g, self.stabilizer)
            }
        };
        Ok(vec![out.into_dyn()])
    }

    fn describe(&self) -> String {
        match self.routing {
            MaxPoolRouting::WinnerTakeAll => "MaxPool(routing: WinnerTakeAll)".into(),
            MaxPoolRouting::Proportional => {
                format!(
                    "MaxPool(routing: Proportional, stabilizer: {})",
                    stab_text(self.stabilizer)
                )
            }
        }
    }

    fn zero_input_relevance(&self, _op: &Op) -> ZeroInput {
        match self.routing {
            // A winner whose value is zero makes its window's output zero.
            MaxPoolRouting::WinnerTakeAll => ZeroInput::IfOutput,
            MaxPoolRouting::Proportional => ZeroInput::Zero,
        }
    }
}

/// The pooled input `[N, C, H, W]`, the relevance `[N·maps, C, OH, OW]` and the window
/// geometry of a pooling node, if `applies`.
fn pool_operands<'a, 'r>(
    ctx: &NodeContext<'a>,
    r_out: ArrayViewD<'r, f32>,
    applies: bool,
    what: &str,
) -> Result<(ArrayView4<'a, f32>, ArrayView4<'r, f32>, PoolGeometry), String> {
    if !applies {
        return Err(format!(
            "the {what} rule does not apply to {}",
            ctx.op().kind()
        ));
    }
    let x = ctx.inputs[0]
        .clone()
        .into_dimensionality::<Ix4>()
        .map_err(|e| e.to_string())?;
    let r = r_out
        .into_dimensionality::<Ix4>()
        .map_err(|e| e.to_string())?;
    let g = PoolGeometry::new(ctx.op(), &x.shape()[1..]).map_err(|e| e.to_string())?;
    Ok((x, r, g))
}

/// How AvgPool, GlobalAvgPool and Add pass relevance down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Split {
    /// In proportion to each input's contribution: the z-rule.
    Proportional,
    /// The gradient: `R/N` per window position (pools), the full `R` to every input (Add).
    Gradient,
}

/// AvgPool and GlobalAvgPool.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AvgPoolRule {
    /// The split.
    pub split: Split,
    /// Stabiliser of `Proportional`.
    pub stabilizer: Stabilizer,
}

impl Rule for AvgPoolRule {
    fn relevance(
        &self,
        ctx: &NodeContext<'_>,
        r_out: ArrayViewD<'_, f32>,
    ) -> Result<Vec<ArrayD<f32>>, String> {
        let (x, r, g) = pool_operands(
            ctx,
            r_out,
            matches!(ctx.op(), Op::AvgPool { .. } | Op::GlobalAvgPool),
            "average-pool",
        )?;
        let out = match self.split {
            Split::Proportional => {
                kernels::avgpool_proportional(x, r, ctx.maps, &g, self.stabilizer)
            }
            Split::Gradient => kernels::avgpool_gradient(r, &g),
        };
        Ok(vec![out.into_dyn()])
    }

    fn describe(&self) -> String {
        split_text("AvgPool", self.split, self.stabilizer)
    }

    fn zero_input_relevance(&self, _op: &Op) -> ZeroInput {
        split_zero_input(self.split)
    }
}

/// The proportional split sends `x_i` times a factor to each input, the gradient split the
/// output relevance itself.
fn split_zero_input(split: Split) -> ZeroInput {
    match split {
        Split::Proportional => ZeroInput::Zero,
        Split::Gradient => ZeroInput::Unknown,
    }
}

fn split_text(what: &str, split: Split, s: Stabilizer) -> String {
    match split {
        Split::Gradient => format!("{what}(split: Gradient)"),
        Split::Proportional => format!("{what}(split: Proportional, stabilizer: {})", stab_text(s)),
    }
}

/// Add (residual connections).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AddRule {
    /// The split.
    pub split: Split,
    /// Stabiliser of `Proportional`.
    pub stabilizer: Stabilizer,
}

impl Rule for AddRule {
    fn relevance(
        &self,
        ctx: &NodeContext<'_>,
        r_out: ArrayViewD<'_, f32>,
    ) -> Result<Vec<ArrayD<f32>>, String> {
        match self.split {
            Split::Gradient => Ok(ctx.inputs.iter().map(|_| r_out.to_owned()).collect()),
            Split::Proportional => {
                let stab = self.stabilizer;
                let s = map_rows(r_out, ctx.output.view(), ctx.maps, |r, z| r / stab.apply(z));
                Ok(ctx
                    .inputs
                    .iter()
                    .map(|x| map_rows(s.view(), x.view(), ctx.maps, |s, x| s * x))
                    .collect())
            }
        }
    }

    fn describe(&self) -> String {
        split_text("Add", self.split, self.stabilizer)
    }

    fn zero_input_relevance(&self, _op: &Op) -> ZeroInput {
        split_zero_input(self.split)
    }

    fn accepts_rectified_output(&self) -> bool {
        self.split == Split::Proportional && nonzero_at_zero(self.stabilizer)
    }
}

/// A BatchNorm that could not be folded into a Conv/Dense: Pass, or the Z-rule on its affine
/// map `y = a·x + c` (`R_i = x_i a R_i / stab(y_i)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNormRule {
    /// Z-rule (true) or Pass (false).
    pub z_rule: bool,
    /// Stabiliser of the Z-rule.
    pub stabilizer: Stabilizer,
}

impl Rule for BatchNormRule {
    fn relevance(
        &self,
        ctx: &NodeContext<'_>,
        r_out: ArrayViewD<'_, f32>,
    ) -> Result<Vec<ArrayD<f32>>, String> {
        if !self.z_rule {
            return Ok(vec![r_out.to_owned()]);
        }
        let Op::BatchNorm { epsilon } = ctx.op() else {
            return Err(format!(
                "the BatchNorm rule does not apply to {}",
                ctx.op().kind()
            ));
        };
        let (scale, var) = (
            ctx.param("scale").ok_or("no scale")?,
            ctx.param("var").ok_or("no var")?,
        );
        let a: Vec<f32> = scale
            .iter()
            .zip(var.iter())
            .map(|(&g, &v)| (g as f64 / (v as f64 + *epsilon as f64).sqrt()) as f32)
            .collect();
        // x·a per channel, then R·(x·a)/stab(y).
        let x = ctx.inputs[0].view();
        let mut xa = x.to_owned();
        for (c, mut lane) in xa.axis_iter_mut(Axis(1)).enumerate() {
            lane.mapv_inplace(|v| v * a[c]);
        }
        let stab = self.stabilizer;
        let mut r = map_rows(r_out, ctx.output.view(), ctx.maps, |rv, y| {
            rv / stab.apply(y)
        });
        crate::rule::mul_rows(&mut r, xa.view(), ctx.maps);
        Ok(vec![r])
    }

    fn describe(&self) -> String {
        if self.z_rule {
            format!(
                "BatchNorm(z: true, stabilizer: {})",
                stab_text(self.stabilizer)
            )
        } else {
            "BatchNorm(z: false)".into()
        }
    }

    fn zero_input_relevance(&self, _op: &Op) -> ZeroInput {
        if self.z_rule {
            ZeroInput::Zero
        } else {
            ZeroInput::Unknown
        }
    }

    fn accepts_rectified_output(&self) -> bool {
        self.z_rule && nonzero_at_zero(self.stabilizer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which structural rules send relevance to zero inputs (see [`ZeroInput`]).
    #[test]
    fn zero_inputs_and_rectified_outputs() {
        let stab = Stabilizer::ZeroGuard(1e-7);
        assert_eq!(Pass.zero_input_relevance(&Op::Relu), ZeroInput::IfOutput);
        assert_eq!(Pass.zero_input_relevance(&Op::Tanh), ZeroInput::IfOutput);
        // sigmoid(0) = 1/2: a zero input is not a zero output.
        assert_eq!(Pass.zero_input_relevance(&Op::Sigmoid), ZeroInput::Unknown);
        assert_eq!(Move.zero_input_relevance(&Op::Flatten), ZeroInput::IfOutput);
        let max = |routing| MaxPoolRule {
            routing,
            stabilizer: stab,
        };
        let op = Op::GlobalMaxPool;
        assert_eq!(
            max(MaxPoolRouting::WinnerTakeAll).zero_input_relevance(&op),
            ZeroInput::IfOutput
        );
        assert_eq!(
            max(MaxPoolRouting::Proportional).zero_input_relevance(&op),
            ZeroInput::Zero
        );
        let add = |split, stabilizer| AddRule { split, stabilizer };
        assert_eq!(
            add(Split::Proportional, stab).zero_input_relevance(&Op::Add),
            ZeroInput::Zero
        );
        assert_eq!(
            add(Split::Gradient, stab).zero_input_relevance(&Op::Add),
            ZeroInput::Unknown
        );
        assert!(add(Split::Proportional, stab).accepts_rectified_output());
        assert!(!add(Split::Proportional, Stabilizer::SignEpsilon(0.0)).accepts_rectified_output());
        assert!(!add(Split::Gradient, stab).accepts_rectified_output());
        let avg = AvgPoolRule {
            split: Split::Gradient,
            stabilizer: stab,
        };
        assert_eq!(
            avg.zero_input_relevance(&Op::GlobalAvgPool),
            ZeroInput::Unknown
        );
        let bn = |z_rule| BatchNormRule {
            z_rule,
            stabilizer: stab,
        };
        let op = Op::BatchNorm { epsilon: 1e-5 };
        assert_eq!(bn(true).zero_input_relevance(&op), ZeroInput::Zero);
        assert_eq!(bn(false).zero_input_relevance(&op), ZeroInput::Unknown);
        assert!(bn(true).accepts_rectified_output());
        assert!(!bn(false).accepts_rectified_output());
    }
}
