//! The [`Rule`] trait and what a rule sees of its node ([`NodeContext`]).

use lrp_ir::{Graph, NodeDef, NodeId, Op};
use ndarray::{ArrayD, ArrayViewD, CowArray, Ix2, Ix4, IxDyn, LinalgScalar};
use rayon::prelude::*;

use lrp_kernels::Stabilizer;
use lrp_kernels::kernels::{self, ConvGeometry};

/// A relevance rule: maps the relevance at a node's output to the relevance at its inputs.
///
/// Every rule is linear in the output relevance for a fixed forward pass. `r_out` holds
/// [`NodeContext::maps`] relevance maps per input image, image-major: row `m` belongs to image
/// `m / maps`. The result has one array per node input, each `[rows of r_out, ...input shape]`.
/// A rule may be called for part of the batch (the engine runs large layers one group of images
/// at a time), so it must treat each image on its own.
pub trait Rule: Send + Sync + std::fmt::Debug {
    /// The relevance at each input of the node.
    fn relevance(
        &self,
        ctx: &NodeContext<'_>,
        r_out: ArrayViewD<'_, f32>,
    ) -> Result<Vec<ArrayD<f32>>, String>;

    /// [`Rule::relevance`] with the output relevance handed over, so that the rule may reuse
    /// its memory (divide it in place, say). The relevance pass calls this one. Default: calls
    /// [`Rule::relevance`] on a view of it.
    fn relevance_owned(
        &self,
        ctx: &NodeContext<'_>,
        r_out: ArrayD<f32>,
    ) -> Result<Vec<ArrayD<f32>>, String> {
        self.relevance(ctx, r_out.view())
    }

    /// A stable one-line description with every parameter, e.g.
    /// `AlphaBeta(alpha: 1, beta: 0, bias: Full, stabilizer: ZeroGuard(1e-7))`.
    fn describe(&self) -> String;

    /// Whether, at this node, the relevance of the (single) input is the output's relevance
    /// unchanged, only in the input's shape (ReLU under [`Pass`](crate::structural::Pass),
    /// Flatten under [`Move`](crate::structural::Move)). The relevance pass then hands the
    /// output's relevance on without calling [`Rule::relevance`], and without a copy. Default:
    /// false.
    fn moves_unchanged(&self, _ctx: &NodeContext<'_>) -> bool {
        false
    }

    /// Whether the rule reads the values of the node's forward output
    /// ([`NodeContext::output`]), not only its shape. Where a rule does not, and only ReLUs
    /// whose rules do not read their inputs consume the output, the forward pass keeps the
    /// ReLUs' outputs instead of this one (ONNX Runtime can then fuse the node with its ReLU),
    /// and the rule sees an `output` of the right shape whose every value is NaN. Default: true.
    fn reads_output(&self) -> bool {
        true
    }

    /// Whether the rule reads the values of the node's forward inputs
    /// ([`NodeContext::inputs`]), not only their shapes. A ReLU whose rule does not may see an
    /// input of the right shape whose every value is NaN (see [`Rule::reads_output`]).
    /// Default: true.
    fn reads_inputs(&self) -> bool {
        true
    }

    /// Whether the relevance this rule sends to an input position whose forward value is zero
    /// is zero too (see [`ZeroInput`]); `op` is the node's op. Default: [`ZeroInput::Unknown`].
    fn zero_input_relevance(&self, _op: &Op) -> ZeroInput {
        ZeroInput::Unknown
    }

    /// Whether the rule, which reads its node's output `z`, gives the same relevance when it
    /// reads `max(z, 0)` instead, provided the output relevance is zero wherever `max(z, 0)`
    /// is: it reads `z` only to divide the output relevance by a stabilised `z` that is nonzero
    /// at 0 (so `0 / stab(0)` is 0) or to select positions by the sign of `z`.
    ///
    /// Where a node's consumers are ReLUs only and the relevance pass can show that condition
    /// (from the rules of the layers above, [`Rule::zero_input_relevance`]), the forward pass
    /// keeps the ReLU's output alone, ONNX Runtime fuses the node with its ReLU, and
    /// [`NodeContext::output`] holds `max(z, 0)`. Default: false.
    fn accepts_rectified_output(&self) -> bool {
        false
    }
}

/// Where a rule sends no relevance, in terms of the forward values: what
/// [`Rule::zero_input_relevance`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroInput {
    /// Zero at every input position whose value is zero, whatever the output relevance: each
    /// input's relevance is its value times a finite factor (ε, z, z⁺, αβ, γ, the proportional
    /// splits of pooling and Add).
    Zero,
    /// Zero at every input position whose value is zero, provided the output relevance is zero
    /// at every output position whose value is zero: relevance moves with the values (ReLU and
    /// other activations with `f(0) = 0` under `Pass`, shape ops, winner-take-all max pooling).
    /// For an element-wise op it also means that each position's relevance comes from the same
    /// output position alone, as a multiple of it.
    IfOutput,
    /// Not known: relevance may reach inputs whose value is zero (flat, w², z^B, the gradient
    /// splits).
    Unknown,
}

/// Input bounds of the bounded (z^B) rule given on the command line: they override the bounds
/// written in rule configurations.
#[derive(Debug, Clone, PartialEq)]
pub struct Bounds {
    /// Lowest input value: one value, or one per input channel.
    pub low: Vec<f32>,
    /// Highest input value: one value, or one per input channel.
    pub high: Vec<f32>,
}

/// What a rule sees of the node it is applied to.
#[derive(Debug)]
pub struct NodeContext<'a> {
    /// The graph.
    pub graph: &'a Graph,
    /// The node.
    pub id: NodeId,
    /// The forward inputs of the node, each `[N, ...]` (the `N` images the rule is called for);
    /// all NaN where the forward pass did not keep them (see [`Rule::reads_inputs`]).
    pub inputs: Vec<ArrayViewD<'a, f32>>,
    /// The forward output of the node, `[N, ...]`; all NaN where the forward pass did not keep
    /// it (see [`Rule::reads_output`]), `max(output, 0)` where it kept the ReLU after the node
    /// instead (see [`Rule::accepts_rectified_output`]).
    pub output: ArrayViewD<'a, f32>,
    /// Relevance maps per image in `r_out`.
    pub maps: usize,
    /// Bounds given on the command line, if any.
    pub bounds: Option<&'a Bounds>,
}

impl<'a> NodeContext<'a> {
    /// The node's definition.
    pub fn node(&self) -> &'a NodeDef {
        &self.graph.nodes()[self.id]
    }

    /// The node's op.
    pub fn op(&self) -> &'a Op {
        &self.node().op
    }

    /// Parameter `name` of the node.
    pub fn param(&self, name: &str) -> Option<ArrayViewD<'a, f32>> {
        self.graph.param(self.id, name)
    }

    /// The node's linear map, if it is a Conv or Dense node.
    pub fn linear(&self) -> Option<Linear<'a>> {
        let weight = self.param("weight")?;
        let bias = self.param("bias");
        let kind = match self.op() {
            Op::Dense => LinearKind::Dense,
            op @ Op::Conv { .. } => {
                let in_shape = &self.inputs[0].shape()[1..];
                LinearKind::Conv(ConvGeometry::new(op, in_shape, weight.shape()).ok()?)
            }
            _ => return None,
        };
        Some(Linear { kind, weight, bias })
    }
}

/// The kind of a linear layer with its geometry.
#[derive(Debug, Clone)]
pub enum LinearKind {
    /// Dense on `[N, in]`.
    Dense,
    /// 2-D convolution.
    Conv(ConvGeometry),
}

/// A Conv or Dense layer as a linear map `x ↦ fwd(x, W)` that rules evaluate with modified
/// inputs and weights.
#[derive(Debug, Clone)]
pub struct Linear<'a> {
    /// Dense or Conv, with the geometry.
    pub kind: LinearKind,
    /// The weight (`[out, in]` or `[O, C/groups, kh, kw]`).
    pub weight: ArrayViewD<'a, f32>,
    /// The bias `[out]`, if any.
    pub bias: Option<ArrayViewD<'a, f32>>,
}

impl Linear<'_> {
    /// `fwd(x, w)`: the layer's map with weight `w`, without bias; `x` is `[rows, ...in]`.
    /// Works in f32, or in f64 where a rule needs exact denominators.
    pub fn forward<A: LinalgScalar + Send + Sync>(
        &self,
        x: ArrayViewD<'_, A>,
        w: ArrayViewD<'_, A>,
    ) -> ArrayD<A> {
        match &self.kind {
            LinearKind::Dense => kernels::dense_forward(
                x.into_dimensionality::<Ix2>().expect("dense input is 2-D"),
                w.into_dimensionality::<Ix2>().expect("dense weight is 2-D"),
            )
            .into_dyn(),
            LinearKind::Conv(g) => kernels::conv2d_forward(
                x.into_dimensionality::<Ix4>().expect("conv input is 4-D"),
                w.into_dimensionality::<Ix4>().expect("conv weight is 4-D"),
                g,
            )
            .into_dyn(),
        }
    }

    /// `T(s, w)`: the transpose of the map with weight `w` (the gradient w.r.t. the input);
    /// `s` is `[rows, ...out]`.
    pub fn transpose(&self, s: ArrayViewD<'_, f32>, w: ArrayViewD<'_, f32>) -> ArrayD<f32> {
        match &self.kind {
            LinearKind::Dense => kernels::dense_transpose(
                s.into_dimensionality::<Ix2>()
                    .expect("dense relevance is 2-D"),
                w.into_dimensionality::<Ix2>().expect("dense weight is 2-D"),
            )
            .into_dyn(),
            LinearKind::Conv(g) => kernels::conv2d_transpose(
                s.into_dimensionality::<Ix4>()
                    .expect("conv relevance is 4-D"),
                w.into_dimensionality::<Ix4>().expect("conv weight is 4-D"),
                g,
            )
            .into_dyn(),
        }
    }

    /// [`transpose`](Self::transpose) of a relevance the caller hands over, which a
    /// convolution that keeps its channel count and size may overwrite with the result instead
    /// of filling a fresh array.
    pub fn transpose_owned(&self, s: ArrayD<f32>, w: ArrayViewD<'_, f32>) -> ArrayD<f32> {
        match &self.kind {
            LinearKind::Dense => self.transpose(s.view(), w),
            LinearKind::Conv(g) => kernels::conv2d_transpose_owned(
                s.into_dimensionality::<Ix4>()
                    .expect("conv relevance is 4-D"),
                w.into_dimensionality::<Ix4>().expect("conv weight is 4-D"),
                g,
            )
            .into_dyn(),
        }
    }

    /// `x ⊙ T(s, w)`: the transpose with row `m` of the result multiplied by row `m / maps` of
    /// `x` (`[rows / maps, ...in]`), in one pass where the kernels can (a convolution by
    /// Winograd's algorithm, or into a few channels), otherwise the transpose (written over `s`
    /// when it is handed over and can be) and then the product.
    pub fn transpose_mul(
        &self,
        s: CowArray<'_, f32, IxDyn>,
        w: ArrayViewD<'_, f32>,
        x: ArrayViewD<'_, f32>,
        maps: usize,
    ) -> ArrayD<f32> {
        if let LinearKind::Conv(g) = &self.kind
            && let Some(r) = kernels::conv2d_transpose_mul(
                four(s.view()),
                four(w.view()),
                g,
                four(x.view()),
                maps,
            )
        {
            return r.into_dyn();
        }
        let mut g = if s.is_view() {
            self.transpose(s.view(), w)
        } else {
            self.transpose_owned(s.into_owned(), w)
        };
        mul_rows(&mut g, x, maps);
        g
    }

    /// `x ⊙ T(r / stab(d + b), w)`: row `m` of `r` divided by row `m / maps` of `d` (plus
    /// `bias`, one value per output unit, the sum and division in f64 when `f64`), and the
    /// result's row `m` multiplied by row `m / maps` of `x`, in one pass where the kernels can
    /// (see [`Linear::transpose_mul`]); None otherwise.
    #[allow(clippy::too_many_arguments)]
    pub fn ratio_transpose_mul(
        &self,
        r: ArrayViewD<'_, f32>,
        d: ArrayViewD<'_, f32>,
        stab: Stabilizer,
        bias: Option<&[f64]>,
        f64: bool,
        w: ArrayViewD<'_, f32>,
        x: ArrayViewD<'_, f32>,
        maps: usize,
    ) -> Option<ArrayD<f32>> {
        let LinearKind::Conv(g) = &self.kind else {
            return None;
        };
        let divide = kernels::Divide {
            d: four(d),
            stab,
            bias,
            f64,
        };
        kernels::conv2d_ratio_transpose_mul(four(r), divide, four(w), g, four(x), maps)
            .map(|a| a.into_dyn())
    }

    /// Adds a per-output-unit (per-channel for Conv) bias `b` to `z`.
    pub fn add_bias<A: Copy + std::ops::AddAssign>(&self, z: &mut ArrayD<A>, b: &ArrayD<A>) {
        let b = b.as_slice().expect("bias is contiguous");
        let per_unit = z.len() / (z.shape()[0] * b.len()).max(1);
        let z = z.as_slice_mut().expect("fresh arrays are contiguous");
        for (k, v) in z.iter_mut().enumerate() {
            *v += b[(k / per_unit) % b.len()];
        }
    }
}

/// A convolution's tensor as 4-D.
fn four<'a>(a: ArrayViewD<'a, f32>) -> ndarray::ArrayView4<'a, f32> {
    a.into_dimensionality::<Ix4>()
        .expect("conv tensors are 4-D")
}

/// A Dense layer's tensor as 2-D.
pub(crate) fn two<'a>(a: ArrayViewD<'a, f32>) -> ndarray::ArrayView2<'a, f32> {
    a.into_dimensionality::<Ix2>()
        .expect("dense tensors are 2-D")
}

/// Multiplies each row `m` of `r` (`[N·maps, ...]`) by row `m / maps` of `x` (`[N, ...]`).
pub fn mul_rows(r: &mut ArrayD<f32>, x: ArrayViewD<'_, f32>, maps: usize) {
    zip_rows(r, x, maps, |a, b| *a *= b);
}

/// Applies `f(r_m, x_{m / maps})` elementwise, row by row (see [`mul_rows`]).
pub fn zip_rows(
    r: &mut ArrayD<f32>,
    x: ArrayViewD<'_, f32>,
    maps: usize,
    f: impl Fn(&mut f32, f32) + Sync,
) {
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    let row = xs.len() / x.shape()[0].max(1);
    if !r.is_standard_layout() {
        *r = r.as_standard_layout().into_owned();
    }
    let rs = r.as_slice_mut().expect("standard layout");
    let row = row.max(1);
    // Rows in parallel, long rows in pieces.
    let piece = row.min(1 << 16);
    rs.par_chunks_mut(row).enumerate().for_each(|(m, chunk)| {
        let xr = &xs[(m / maps) * row..(m / maps + 1) * row];
        chunk
            .par_chunks_mut(piece)
            .zip(xr.par_chunks(piece))
            .for_each(|(a, b)| {
                for (a, &b) in a.iter_mut().zip(b) {
                    f(a, b);
                }
            });
    });
}

/// A new array of `r`'s shape holding `f(r_m, x_{m / maps})` elementwise, row by row (see
/// [`mul_rows`]): one parallel pass, with no copy of `r` first.
pub fn map_rows(
    r: ArrayViewD<'_, f32>,
    x: ArrayViewD<'_, f32>,
    maps: usize,
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> ArrayD<f32> {
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    let row = (xs.len() / x.shape()[0].max(1)).max(1);
    let r = r.as_standard_layout();
    let rs = r.as_slice().expect("standard layout");
    assert_eq!(
        rs.len(),
        xs.len() * maps,
        "map_rows: {} relevance values for {} values × {maps} maps",
        rs.len(),
        xs.len()
    );
    let out = kernels::par_rows_with(rs.len() / row, row, |m, span, out| {
        let xr = &xs[(m / maps) * row..][span.clone()];
        let rr = &rs[m * row..][span];
        out.extend(rr.iter().zip(xr).map(|(&r, &x)| f(r, x)));
    });
    ArrayD::from_shape_vec(r.raw_dim(), out).expect("same length as r")
}

/// Repeats every row of `x` (`[N, ...]`) `maps` times: `[N·maps, ...]`.
pub fn repeat_rows(x: ArrayViewD<'_, f32>, maps: usize) -> ArrayD<f32> {
    if maps == 1 {
        return x.to_owned();
    }
    let views: Vec<_> = x
        .outer_iter()
        .flat_map(|row| std::iter::repeat_n(row, maps))
        .collect();
    ndarray::stack(ndarray::Axis(0), &views).expect("rows share a shape")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    #[test]
    fn map_rows_pairs_each_map_with_its_image() {
        // r: [N = 2 images × maps = 2, 3]; x: [2, 3]; f(r, x) = r / x.
        let r = ArrayD::from_shape_vec(
            IxDyn(&[4, 3]),
            vec![
                2.0f32, 4.0, 6.0, 1.0, 1.0, 1.0, 10.0, 20.0, 30.0, -5.0, 0.0, 5.0,
            ],
        )
        .unwrap();
        let x =
            ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1.0f32, 2.0, 3.0, 5.0, 10.0, 5.0]).unwrap();
        let out = map_rows(r.view(), x.view(), 2, |r, x| r / x);
        assert_eq!(out.shape(), &[4, 3]);
        let want = [
            2.0f32,
            2.0,
            2.0,
            1.0,
            0.5,
            1.0 / 3.0,
            2.0,
            2.0,
            6.0,
            -1.0,
            0.0,
            1.0,
        ];
        assert_eq!(out.iter().copied().collect::<Vec<_>>(), want);
        // The same as zip_rows on a copy.
        let mut z = r.clone();
        zip_rows(&mut z, x.view(), 2, |r, x| *r /= x);
        assert_eq!(z, out);
    }

    #[test]
    fn map_rows_reads_transposed_views() {
        let r = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![1.0f32, 2.0, 3.0, 4.0]).unwrap();
        let x = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![10.0f32, 20.0, 30.0, 40.0]).unwrap();
        // rᵀ = [[1, 3], [2, 4]].
        let out = map_rows(r.t(), x.view(), 1, |r, x| r + x);
        assert_eq!(
            out.iter().copied().collect::<Vec<_>>(),
            [11.0, 23.0, 32.0, 44.0]
        );
    }
}
