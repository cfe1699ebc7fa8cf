//! Numeric kernels of the relevance pass (f32, NCHW).
//!
//! - Convolution: [`conv2d_forward`] (the layer's linear map without bias) and
//!   [`conv2d_transpose`] (its transpose, the gradient w.r.t. the input), both im2col/col2im +
//!   GEMM per group, on a [`ConvGeometry`], or the [`Sconv`] in use (see [`use_backends`]);
//!   large 3×3, stride-1 ones by Winograd's minimal filtering where [`Backends::conv3x3`] asks
//!   for it ([`Conv3x3`]).
//! - Dense: [`dense_forward`] and [`dense_transpose`].
//! - Pools, on a [`PoolGeometry`]: winner-take-all and proportional redistribution through max
//!   pools, the z-rule and the gradient through average pools, and their global forms.
//!
//! Relevance tensors may hold `k` maps per image (`[N·k, …]`, image-major: row `m` belongs to
//! image `m / k`); the pool kernels take the activations once (`[N, …]`) and the relevance with
//! all its rows. The linear kernels take any batch, so one call serves every map.
//!
//! Shapes that disagree with the geometry are programming errors and panic with a message that
//! names the kernel; geometries are validated once, when they are built from an [`Op`].

use lrp_ir::Op;
use lrp_ir::op::window_out;
use ndarray::{
    Array, Array2, Array4, ArrayView1, ArrayView2, ArrayView4, ArrayViewMut, ArrayViewMut2,
    ArrayViewMut4, Axis, Ix4, s,
};
use ndarray::{LinalgScalar, ShapeBuilder};
use rayon::prelude::*;

use crate::{Stabilizer, winograd};

/// The op or shapes a geometry was asked to describe do not make a valid layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op}: {message}")]
pub struct KernelError {
    /// The op's kind (`"Conv"`, `"MaxPool"`, …).
    pub op: &'static str,
    /// What is wrong.
    pub message: String,
}

impl KernelError {
    fn new(op: &'static str, message: impl Into<String>) -> Self {
        KernelError {
            op,
            message: message.into(),
        }
    }
}

/// Upper bound, in elements, on the im2col buffer of one GEMM: several small images share one
/// GEMM, a large image is cut into bands of output rows, so the buffer stays in the caches
/// (col2im and im2col are memory-bound otherwise). A band has at least [`MIN_BAND_COLUMNS`]
/// output positions, so the GEMM stays wide.
const COL_BUDGET: usize = 1 << 21;

/// Fewest output positions of a band of rows (see [`COL_BUDGET`]).
const MIN_BAND_COLUMNS: usize = 512;

/// The strides of a 2-D view as an `Ix2` (for rebuilding it from its pointer); only called on
/// views with non-negative strides.
fn stride_dim<A>(v: &ArrayView2<A>) -> (usize, usize) {
    let s = v.strides();
    (s[0] as usize, s[1] as usize)
}

/// Products with fewer multiply-adds than this run on one thread.
const PARALLEL_MIN_MACS: usize = 1 << 20;

/// A single-precision matrix product from outside this crate (ONNX Runtime's, say) that
/// [`matmul`] prefers for large f32 products; see [`use_backends`].
pub trait Sgemm: Send + Sync + std::fmt::Debug {
    /// `out = a · b` (`a` `[m, k]`, `b` `[k, n]`, `out` `[m, n]` in standard layout), writing
    /// every element of `out` without reading it (it may hold anything, even uninitialised
    /// memory). Returns false when it cannot take these operands; `out` then holds anything,
    /// and [`matmul`] computes the product itself.
    fn sgemm(&self, a: ArrayView2<f32>, b: ArrayView2<f32>, out: ArrayViewMut2<f32>) -> bool;
}

/// Single-precision convolutions from outside this crate (ONNX Runtime's, say) that
/// [`conv2d_forward`] and [`conv2d_transpose`] prefer for large f32 work; see [`use_backends`].
pub trait Sconv: Send + Sync + std::fmt::Debug {
    /// `out = ` [`conv2d_forward`]`(x, w, g)`; `x`, `w` and `out` are in standard layout.
    /// Writes every element of `out` without reading it (it may be uninitialised memory).
    /// Returns false when it cannot take these operands; `out` then holds anything, and the
    /// kernel computes it itself.
    fn forward(
        &self,
        x: ArrayView4<f32>,
        w: ArrayView4<f32>,
        g: &ConvGeometry,
        out: ArrayViewMut4<f32>,
    ) -> bool;

    /// `out = ` [`conv2d_transpose`]`(s, w, g)`, with the same contract as
    /// [`forward`](Sconv::forward).
    fn transpose(
        &self,
        s: ArrayView4<f32>,
        w: ArrayView4<f32>,
        g: &ConvGeometry,
        out: ArrayViewMut4<f32>,
    ) -> bool;

    /// `s = ` [`conv2d_transpose`]`(s, w, g)` in place, for a geometry whose transpose has the
    /// relevance's own shape; `s` is in standard layout. Returns false, leaving `s` as it was,
    /// when it cannot; the default never can.
    fn transpose_in_place(
        &self,
        s: ArrayViewMut4<f32>,
        w: ArrayView4<f32>,
        g: &ConvGeometry,
    ) -> bool {
        let _ = (s, w, g);
        false
    }
}

/// The kernels from outside this crate in use on a thread (see [`use_backends`]); `None`: the
/// crate's own code.
#[derive(Debug, Clone, Default)]
pub struct Backends {
    /// Large f32 matrix products ([`matmul`]).
    pub sgemm: Option<std::sync::Arc<dyn Sgemm>>,
    /// Large f32 convolutions and their transposes.
    pub conv: Option<std::sync::Arc<dyn Sconv>>,
    /// How large f32 3×3 convolutions with stride 1 are computed (ahead of `conv`).
    pub conv3x3: Conv3x3,
}

/// How the kernels compute large f32 convolutions with a 3×3 kernel, stride 1, no dilation
/// and one group (and their transposes), the bulk of VGG- and ResNet-style networks.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Conv3x3 {
    /// Like every other convolution: the [`Sconv`] in use, or im2col and a matrix product.
    #[default]
    Direct,
    /// Winograd's minimal filtering F(2×2, 3×3) (Lavin & Gray, 2016): 16 products per 2×2
    /// outputs and channel pair instead of 36. Its transforms' coefficients are 0, ±1 and ±½,
    /// so results differ from a direct sum by rounding only (each output sums a few more
    /// terms; measured RMS error 1.3–1.8× a plain f32 sum's). Used where the processor
    /// has AVX2 and FMA or AVX-512 and both channel counts are at least 8; elsewhere `Direct`,
    /// except for transposes into at most 8 channels (an RGB layer's), which in this mode and
    /// in `Winograd4` run by direct sums of this crate's own (one pass over the wide side).
    Winograd,
    /// Winograd's F(4×4, 3×3): 36 products per 4×4 outputs instead of 144. Its transforms
    /// have coefficients up to 8 and 1/24, so its rounding error is several times a direct
    /// sum's (measured RMS error 6.5–8.7× a plain f32 sum's; bounded in the tests by 32 f32
    /// epsilons of the sum of the terms' magnitudes, against 8 for F(2×2, 3×3)). Used where
    /// `Winograd` is, where F(4×4, 3×3)'s tiles need at most two thirds of F(2×2, 3×3)'s
    /// products and an image has at least 32 of them (square outputs from 23×23 up; not 14×14,
    /// which its tiles overhang, nor 7×7); F(2×2, 3×3) elsewhere. The default of the
    /// `lrp-graph` command line and of the engine.
    Winograd4,
}

thread_local! {
    static BACKENDS: std::cell::RefCell<Backends> =
        std::cell::RefCell::new(Backends::default());
}

/// The [`Backends`] in use on this thread until the guard is dropped (then the previous ones
/// are restored); see [`use_backends`].
#[must_use = "the backends are in use only while the guard lives"]
pub struct BackendGuard {
    previous: Option<Backends>,
}

impl Drop for BackendGuard {
    fn drop(&mut self) {
        if let Some(b) = self.previous.take() {
            BACKENDS.with(|c| *c.borrow_mut() = b);
        }
    }
}

thread_local! {
    static FILTERS: std::cell::RefCell<Option<FilterCache>> = const { std::cell::RefCell::new(None) };
}

/// Most bytes of Winograd filters (with the weights they were made from) a [`FilterScope`]
/// keeps; filters made beyond it are used once and dropped.
const FILTER_CACHE_BYTES: usize = 256 << 20;

/// Winograd filters made on this thread while a [`FilterScope`] lives, with the weights each
/// was made from.
#[derive(Default)]
struct FilterCache {
    entries: Vec<FilterEntry>,
    bytes: usize,
}

/// A layer's filters in Winograd form, made from `weights` (a copy: a hit compares every bit).
struct FilterEntry {
    o: usize,
    c: usize,
    transpose: bool,
    tile: winograd::Tile,
    weights: Vec<f32>,
    filter: std::sync::Arc<winograd::Filter>,
}

/// Keeps the Winograd filters the kernels make on this thread until dropped (then the previous
/// scope's, if any, are in use again); see [`keep_filters`].
#[must_use = "filters are kept only while the scope lives"]
pub struct FilterScope {
    previous: Option<Option<FilterCache>>,
}

impl Drop for FilterScope {
    fn drop(&mut self) {
        if let Some(p) = self.previous.take() {
            FILTERS.with(|c| *c.borrow_mut() = p);
        }
    }
}

/// Keeps the Winograd filters the convolutions on this thread make (up to 256 MiB) until the
/// returned scope is dropped, so that calls with the same weights (the groups of images of one
/// relevance pass) transform them once. A filter is reused only for weights equal to its own
/// bit for bit, so results are the same as without the scope.
pub fn keep_filters() -> FilterScope {
    FilterScope {
        previous: Some(FILTERS.with(|c| c.borrow_mut().replace(FilterCache::default()))),
    }
}

/// The Winograd filters of weight `w` (`[o, c, 3, 3]`), from the [`FilterScope`] in use when
/// it holds them, and kept there when there is one and it has room.
fn winograd_filter(
    w: &[f32],
    o: usize,
    c: usize,
    transpose: bool,
    tile: winograd::Tile,
) -> std::sync::Arc<winograd::Filter> {
    let same = |e: &FilterEntry| {
        // (the same o and c: the same number of weights)
        (e.o, e.c, e.transpose, e.tile) == (o, c, transpose, tile)
            && e.weights
                .iter()
                .zip(w)
                .all(|(a, b)| a.to_bits() == b.to_bits())
    };
    let cached = FILTERS.with(|cell| {
        let cache = cell.borrow();
        cache
            .as_ref()
            .and_then(|k| k.entries.iter().find(|e| same(e)).map(|e| e.filter.clone()))
    });
    if let Some(f) = cached {
        return f;
    }
    let filter = std::sync::Arc::new(winograd::Filter::new(w, o, c, transpose, tile));
    FILTERS.with(|cell| {
        if let Some(cache) = cell.borrow_mut().as_mut() {
            let bytes = filter.bytes() + std::mem::size_of_val(w);
            if cache.bytes + bytes <= FILTER_CACHE_BYTES {
                cache.bytes += bytes;
                cache.entries.push(FilterEntry {
                    o,
                    c,
                    transpose,
                    tile,
                    weights: w.to_vec(),
                    filter: filter.clone(),
                });
            }
        }
    });
    filter
}

/// Makes the kernels on this thread use `backends` for large f32 work until the returned guard
/// is dropped.
pub fn use_backends(backends: Backends) -> BackendGuard {
    BackendGuard {
        previous: Some(BACKENDS.with(|c| std::mem::replace(&mut *c.borrow_mut(), backends))),
    }
}

fn sgemm_backend() -> Option<std::sync::Arc<dyn Sgemm>> {
    BACKENDS.with(|c| c.borrow().sgemm.clone())
}

fn conv_backend() -> Option<std::sync::Arc<dyn Sconv>> {
    BACKENDS.with(|c| c.borrow().conv.clone())
}

/// `rows × row_len` values, `f(row, i)` at position `i` of row `row`, computed in parallel
/// (rows, and long rows in pieces) straight into fresh memory: no zeroing pass first.
pub fn par_rows(rows: usize, row_len: usize, f: impl Fn(usize, usize) -> f32 + Sync) -> Vec<f32> {
    par_rows_with(rows, row_len, |m, span, out| {
        out.extend(span.map(|i| f(m, i)))
    })
}

/// The front of one piece of a row that [`par_rows_with`] is filling: values are appended in
/// order.
pub struct RowWriter<'a> {
    dst: &'a mut [std::mem::MaybeUninit<f32>],
    written: usize,
}

impl RowWriter<'_> {
    /// Appends `values` after those written so far; values beyond the piece's end are dropped
    /// (and [`par_rows_with`] then panics, as it does for a piece left short).
    #[inline]
    pub fn extend(&mut self, values: impl IntoIterator<Item = f32>) {
        let mut n = 0;
        for (d, v) in self.dst[self.written..].iter_mut().zip(values) {
            d.write(v);
            n += 1;
        }
        self.written += n;
    }

    /// How many values the piece still needs.
    pub fn remaining(&self) -> usize {
        self.dst.len() - self.written
    }
}

/// `rows × row_len` values computed in parallel (rows, and long rows in pieces) straight into
/// fresh memory: `f(row, span, out)` appends the values of positions `span` of row `row` to
/// `out`, in order, e.g. from zipped slices, which vectorise. Panics if a piece is left short.
pub fn par_rows_with(
    rows: usize,
    row_len: usize,
    f: impl Fn(usize, std::ops::Range<usize>, &mut RowWriter<'_>) + Sync,
) -> Vec<f32> {
    let len = rows * row_len;
    let mut out = Vec::with_capacity(len);
    let piece = row_len.clamp(1, 1 << 16);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(row_len.max(1))
        .enumerate()
        .for_each(|(m, row)| {
            row.par_chunks_mut(piece).enumerate().for_each(|(p, dst)| {
                let start = p * piece;
                let span = start..start + dst.len();
                let mut w = RowWriter { dst, written: 0 };
                f(m, span, &mut w);
                assert_eq!(w.remaining(), 0, "par_rows_with: a piece was left short");
            });
        });
    // SAFETY: the chunks above cover all `len` elements, and each piece was written in full
    // (asserted) before this point.
    unsafe { out.set_len(len) };
    out
}

/// An array of `shape` filled by a [`Backends`] kernel (`run` returns whether it took the
/// work), or None when it declined.
///
/// # Safety
/// `A` must be f32.
unsafe fn from_backend<A: Copy + 'static, D: ndarray::Dimension>(
    shape: D,
    run: impl FnOnce(ArrayViewMut<'_, f32, D>) -> bool,
) -> Option<Array<A, D>> {
    debug_assert_eq!(std::any::TypeId::of::<A>(), std::any::TypeId::of::<f32>());
    let mut out = Array::<A, D>::uninit(shape);
    // SAFETY: A is f32 (the caller's promise), and the view covers the fresh array's own
    // elements; a backend that takes the work writes every element before any is read.
    let view = unsafe { ArrayViewMut::from_shape_ptr(out.raw_dim(), out.as_mut_ptr() as *mut f32) };
    // SAFETY: written in full when `run` says it took the work.
    run(view).then(|| unsafe { out.assume_init() })
}

/// `out = lhs · rhs` for any strides (f32 or f64). Large f32 products go to the [`Sgemm`] in
/// use on this thread (see [`use_backends`]) if there is one; the rest run on the `gemm` crate, on the current rayon pool's
/// threads when the product is large enough to gain from them.
pub fn matmul<A: LinalgScalar>(lhs: ArrayView2<A>, rhs: ArrayView2<A>, out: &mut ArrayViewMut2<A>) {
    let (m, k) = lhs.dim();
    let (k2, n) = rhs.dim();
    assert!(
        k == k2 && out.dim() == (m, n),
        "matmul: [{m}, {k}] × [{k2}, {n}] into {:?}",
        out.dim()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out.fill(A::zero());
        return;
    }
    if std::any::TypeId::of::<A>() == std::any::TypeId::of::<f32>()
        && m * n * k >= PARALLEL_MIN_MACS
        && out.is_standard_layout()
        && lhs.strides().iter().chain(rhs.strides()).all(|&st| st >= 0)
    {
        let provider = sgemm_backend();
        if let Some(p) = provider {
            // SAFETY: A is f32 (checked above), so these are the same views retyped.
            let (a, b, o) = unsafe {
                (
                    ArrayView2::from_shape_ptr(
                        (m, k).strides(stride_dim(&lhs)),
                        lhs.as_ptr() as *const f32,
                    ),
                    ArrayView2::from_shape_ptr(
                        (k, n).strides(stride_dim(&rhs)),
                        rhs.as_ptr() as *const f32,
                    ),
                    ArrayViewMut2::from_shape_ptr((m, n), out.as_mut_ptr() as *mut f32),
                )
            };
            if p.sgemm(a, b, o) {
                return;
            }
        }
    }
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 && m * n * k >= PARALLEL_MIN_MACS {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    gemm_into(lhs, rhs, out, false, parallelism);
}

/// `out = lhs · rhs`, or `out += lhs · rhs` with `accumulate`, by the gemm crate (`lhs`
/// `[m, k]`, `rhs` `[k, n]`, `out` `[m, n]`, none of them empty; the callers check the shapes).
fn gemm_into<A: LinalgScalar>(
    lhs: ArrayView2<A>,
    rhs: ArrayView2<A>,
    out: &mut ArrayViewMut2<A>,
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    let ((m, k), n) = (lhs.dim(), rhs.ncols());
    debug_assert!(rhs.nrows() == k && out.dim() == (m, n) && m * n * k > 0);
    let (ls, rs) = (lhs.strides(), rhs.strides());
    let os = [out.strides()[0], out.strides()[1]];
    let dst = out.as_mut_ptr();
    // SAFETY: the pointers and strides describe the three views exactly (their shapes agree,
    // the callers' checks); `out` is borrowed mutably, so it aliases neither input. gemm
    // writes `out = a·out + lhs·rhs`, reading `out` only with `accumulate` (a = 1).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            os[1],
            os[0],
            accumulate,
            lhs.as_ptr(),
            ls[1],
            ls[0],
            rhs.as_ptr(),
            rs[1],
            rs[0],
            if accumulate { A::one() } else { A::zero() },
            A::one(),
            false,
            false,
            false,
            parallelism,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Convolution
// ---------------------------------------------------------------------------------------------

/// The geometry of one 2-D convolution: per-sample input `[C, H, W]`, weight
/// `[O, C/groups, kh, kw]`, per-sample output `[O, OH, OW]`, strides, zero padding
/// `[top, left, bottom, right]`, dilations and groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvGeometry {
    input: [usize; 3],
    output: [usize; 3],
    kernel: [usize; 2],
    strides: [usize; 2],
    pads: [usize; 4],
    dilations: [usize; 2],
    groups: usize,
}

impl ConvGeometry {
    /// The geometry of `op` (an [`Op::Conv`]) on a per-sample input of shape `input` (`[C, H, W]`)
    /// with a weight of shape `weight` (`[O, C/groups, kh, kw]`). The output size is ONNX's
    /// (floor mode).
    pub fn new(op: &Op, input: &[usize], weight: &[usize]) -> Result<Self, KernelError> {
        let &Op::Conv {
            kernel,
            strides,
            pads,
            dilations,
            groups,
        } = op
        else {
            return Err(KernelError::new(
                op.kind(),
                "a convolution geometry needs a Conv op",
            ));
        };
        let err = |m: String| KernelError::new("Conv", m);
        let &[c, h, w] = input else {
            return Err(err(format!(
                "input must have per-sample shape [C, H, W], got {input:?}"
            )));
        };
        let &[o, cg, kh, kw] = weight else {
            return Err(err(format!(
                "weight must have shape [O, C/groups, kh, kw], got {weight:?}"
            )));
        };
        if kernel.contains(&0) || strides.contains(&0) || dilations.contains(&0) {
            return Err(err(format!(
                "kernel {kernel:?}, strides {strides:?} and dilations {dilations:?} must be positive"
            )));
        }
        if groups == 0 || c == 0 || !c.is_multiple_of(groups) {
            return Err(err(format!(
                "groups = {groups} does not divide the {c} input channels"
            )));
        }
        if o == 0 || !o.is_multiple_of(groups) {
            return Err(err(format!(
                "{o} output channels are not divisible by groups = {groups}"
            )));
        }
        if cg != c / groups || [kh, kw] != kernel {
            return Err(err(format!(
                "weight has shape {weight:?}, expected [{o}, {}, {}, {}]",
                c / groups,
                kernel[0],
                kernel[1]
            )));
        }
        let oh =
            window_out(h, kh, strides[0], pads[0], pads[2], dilations[0], false).map_err(err)?;
        let ow =
            window_out(w, kw, strides[1], pads[1], pads[3], dilations[1], false).map_err(err)?;
        Ok(ConvGeometry {
            input: [c, h, w],
            output: [o, oh, ow],
            kernel,
            strides,
            pads,
            dilations,
            groups,
        })
    }

    /// Per-sample input shape `[C, H, W]`.
    pub fn input_shape(&self) -> [usize; 3] {
        self.input
    }
    /// Per-sample output shape `[O, OH, OW]`.
    pub fn output_shape(&self) -> [usize; 3] {
        self.output
    }
    /// Whether the map (or its transpose) over `images` images is large enough to go to the
    /// [`Sconv`] in use: at least [`PARALLEL_MIN_MACS`] multiply-adds.
    fn for_backend(&self, images: usize) -> bool {
        self.macs(images) >= PARALLEL_MIN_MACS
    }

    /// Multiply-adds of the map over `images` images.
    fn macs(&self, images: usize) -> usize {
        let [c, _, _] = self.input;
        let [o, oh, ow] = self.output;
        images * o * oh * ow * (c / self.groups) * self.kernel[0] * self.kernel[1]
    }

    /// The Winograd tile the map (and its transpose) over `images` images goes to, if any (see
    /// [`Conv3x3`]).
    fn winograd(&self, images: usize) -> Option<winograd::Tile> {
        let tile = match BACKENDS.with(|c| c.borrow().conv3x3) {
            Conv3x3::Direct => return None,
            Conv3x3::Winograd => winograd::Tile::F2,
            Conv3x3::Winograd4 => winograd::Tile::widest_for(self.output[1], self.output[2]),
        };
        (self.is_3x3_stride_1()
            && self.input[0] >= 8
            && self.output[0] >= 8
            && self.for_backend(images)
            && winograd::fast())
        .then_some(tile)
    }

    /// Whether this is a 3×3, stride-1, undilated convolution of one group with top and left
    /// padding of at most 2: the shape the kernels of [`Conv3x3`]'s fast modes take.
    fn is_3x3_stride_1(&self) -> bool {
        self.kernel == [3, 3]
            && self.strides == [1, 1]
            && self.dilations == [1, 1]
            && self.groups == 1
            && self.pads[0] <= 2
            && self.pads[1] <= 2
    }

    /// Whether [`conv2d_transpose_mul`] and [`conv2d_ratio_transpose_mul`] run (rather than
    /// decline) for `rows` relevance rows with this geometry and the backends in use.
    pub fn transposes_fused(&self, rows: usize) -> bool {
        self.winograd(rows).is_some() || self.narrow(rows)
    }

    /// The same convolution with `channels` input channels (one group only; None otherwise).
    pub fn with_input_channels(&self, channels: usize) -> Option<ConvGeometry> {
        (self.groups == 1 && channels > 0).then(|| ConvGeometry {
            input: [channels, self.input[1], self.input[2]],
            ..self.clone()
        })
    }

    /// Whether the transpose over `rows` relevance rows goes to the direct kernel for a few
    /// channels (`narrow`): a 3×3, stride-1 map into at most [`narrow::MAX_ROWS`] input
    /// channels (an RGB layer), padding at most 2, enough work for the workers, where the 3×3
    /// convolutions are not left to the backend ([`Conv3x3::Direct`]).
    fn narrow(&self, rows: usize) -> bool {
        BACKENDS.with(|c| c.borrow().conv3x3) != Conv3x3::Direct
            && self.is_3x3_stride_1()
            && self.input[0] <= crate::narrow::MAX_ROWS
            && self.for_backend(rows)
    }

    /// The map over `x` (`[n, C, H, W]`, standard layout), or with `transpose` its transpose
    /// over `x` (`[n, O, OH, OW]`), by Winograd's algorithm; with `scale`, each output times its
    /// factor.
    fn winograd_run(
        &self,
        x: winograd::Source<'_>,
        w: &[f32],
        n: usize,
        transpose: bool,
        tile: winograd::Tile,
        scale: Option<winograd::Scale<'_>>,
    ) -> Array4<f32> {
        let ([c, h, wd], [o, oh, ow]) = (self.input, self.output);
        let f = winograd_filter(w, o, c, transpose, tile);
        let pads = [self.pads[0], self.pads[1]];
        let shape = winograd::Shape::of_map(n, [h, wd], pads, [oh, ow], transpose);
        let rows = if transpose { c } else { o };
        let mut out = Array4::<f32>::uninit((n, rows, shape.oh, shape.ow));
        winograd::conv(
            x,
            &f,
            shape,
            out.as_slice_mut().expect("fresh array"),
            scale,
        );
        // SAFETY: `conv` writes every element.
        unsafe { out.assume_init() }
    }

    /// The transpose over `source` (`[n, O, OH, OW]`) by the direct kernel for a few channels
    /// (see [`narrow`](Self::narrow)), each output times its factor with `scale`.
    fn narrow_run(
        &self,
        source: winograd::Source<'_>,
        w: &[f32],
        n: usize,
        scale: Option<winograd::Scale<'_>>,
    ) -> Array4<f32> {
        let ([c, h, wd], [o, oh, ow]) = (self.input, self.output);
        let shape = crate::narrow::Shape {
            n,
            rows: c,
            h,
            w: wd,
            cols: o,
            oh,
            ow,
            top: self.pads[0],
            left: self.pads[1],
        };
        let mut out = Array4::<f32>::uninit((n, c, h, wd));
        crate::narrow::transpose(
            source,
            w,
            shape,
            out.as_slice_mut().expect("fresh array"),
            scale,
        );
        // SAFETY: `transpose` writes every element.
        unsafe { out.assume_init() }
    }

    /// Weight shape `[O, C/groups, kh, kw]`.
    pub fn weight_shape(&self) -> [usize; 4] {
        [
            self.output[0],
            self.input[0] / self.groups,
            self.kernel[0],
            self.kernel[1],
        ]
    }
    /// Kernel height and width.
    pub fn kernel(&self) -> [usize; 2] {
        self.kernel
    }
    /// Strides along H and W.
    pub fn strides(&self) -> [usize; 2] {
        self.strides
    }
    /// Zero padding: top, left, bottom, right.
    pub fn pads(&self) -> [usize; 4] {
        self.pads
    }
    /// Dilations along H and W.
    pub fn dilations(&self) -> [usize; 2] {
        self.dilations
    }
    /// Number of groups.
    pub fn groups(&self) -> usize {
        self.groups
    }

    fn check(&self, what: &str, got: &[usize], per_sample: [usize; 3]) -> usize {
        assert!(
            got.len() == 4 && got[1..] == per_sample,
            "{what}: tensor of shape {got:?} does not match the geometry (expected [_, {}, {}, {}])",
            per_sample[0],
            per_sample[1],
            per_sample[2]
        );
        got[0]
    }

    fn check_weight(&self, what: &str, got: &[usize]) {
        let want = self.weight_shape();
        assert!(
            got == want,
            "{what}: weight of shape {got:?} does not match the geometry (expected {want:?})"
        );
    }

    fn taps(&self) -> (Vec<Tap>, Vec<Tap>) {
        let [_, h, w] = self.input;
        let [_, oh, ow] = self.output;
        (
            taps(
                h,
                self.kernel[0],
                self.strides[0],
                self.pads[0],
                self.dilations[0],
                oh,
            ),
            taps(
                w,
                self.kernel[1],
                self.strides[1],
                self.pads[1],
                self.dilations[1],
                ow,
            ),
        )
    }
}

/// For one kernel tap along one axis: outputs `lo..hi` read a real (unpadded) input position, the
/// one of output `lo` being `first`; consecutive outputs step by the stride.
#[derive(Debug, Clone, Copy)]
struct Tap {
    lo: usize,
    hi: usize,
    first: usize,
}

fn taps(len: usize, k: usize, stride: usize, pad: usize, dil: usize, out: usize) -> Vec<Tap> {
    (0..k)
        .map(|t| {
            // Output o reads input o·stride + t·dil − pad.
            let off = t * dil;
            let lo = if pad > off {
                (pad - off).div_ceil(stride)
            } else {
                0
            };
            let hi = if len + pad > off {
                ((len + pad - off - 1) / stride + 1).min(out)
            } else {
                0
            };
            let lo = lo.min(hi);
            let first = if lo < hi { lo * stride + off - pad } else { 0 };
            Tap { lo, hi, first }
        })
        .collect()
}

/// One GEMM's share of a convolution: images `n0..n0 + nb`, output rows `r0..r1` of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tile {
    n0: usize,
    nb: usize,
    r0: usize,
    r1: usize,
}

impl Tile {
    /// Output positions of one image in the tile.
    fn positions(&self, ow: usize) -> usize {
        (self.r1 - self.r0) * ow
    }
}

/// Cuts `n` images with `kg` column-matrix rows and `[oh, ow]` output positions into tiles whose
/// column matrix holds at most `budget` elements: whole images where one fits, else bands of
/// rows of one image (at least one row, and `MIN_BAND_COLUMNS` positions where the budget
/// allows).
fn tiles(n: usize, kg: usize, oh: usize, ow: usize, budget: usize) -> Vec<Tile> {
    let per_image = (kg * oh * ow).max(1);
    if per_image <= budget || oh <= 1 {
        let nb = (budget / per_image).clamp(1, n.max(1));
        return (0..n)
            .step_by(nb)
            .map(|n0| Tile {
                n0,
                nb: nb.min(n - n0),
                r0: 0,
                r1: oh,
            })
            .collect();
    }
    let ow = ow.max(1);
    let rows = (budget / (kg.max(1) * ow))
        .max(MIN_BAND_COLUMNS.min(budget / kg.max(1)).div_ceil(ow))
        .clamp(1, oh);
    (0..n)
        .flat_map(|ni| {
            (0..oh).step_by(rows).map(move |r0| Tile {
                n0: ni,
                nb: 1,
                r0,
                r1: (r0 + rows).min(oh),
            })
        })
        .collect()
}

/// Sizes shared by im2col and col2im.
struct Cols<'a> {
    g: &'a ConvGeometry,
    th: Vec<Tap>,
    tw: Vec<Tap>,
    /// Input channels per group.
    cg: usize,
    /// Output channels per group.
    og: usize,
    /// Rows of a group's column matrix: `cg·kh·kw`.
    kg: usize,
    /// Output positions per image.
    p: usize,
}

impl<'a> Cols<'a> {
    fn new(g: &'a ConvGeometry) -> Self {
        let (th, tw) = g.taps();
        let [c, _, _] = g.input;
        let [o, oh, ow] = g.output;
        let cg = c / g.groups;
        Cols {
            g,
            th,
            tw,
            cg,
            og: o / g.groups,
            kg: cg * g.kernel[0] * g.kernel[1],
            p: oh * ow,
        }
    }

    /// The output rows of tap `th` inside `r0..r1`, and the input row the first of them reads.
    fn rows(&self, th: &Tap, t: &Tile) -> (usize, usize, usize) {
        // A tap whose rows start after the band (large padding, thin bands) has none in it.
        let lo = th.lo.clamp(t.r0, t.r1);
        let hi = th.hi.clamp(lo, t.r1);
        (
            lo,
            hi,
            th.first + lo.saturating_sub(th.lo) * self.g.strides[0],
        )
    }

    /// Fills `col` (`[cg·kh·kw, nb·q]`, row-major, `q` the tile's positions per image) with the
    /// receptive fields of the tile's output positions, channels `c0..c0+cg` of `xs`
    /// (`[N, C, H, W]`, contiguous); padding reads 0.
    fn im2col<A: LinalgScalar + Send + Sync>(&self, xs: &[A], col: &mut [A], t: &Tile, c0: usize) {
        let [c, h, w] = self.g.input;
        let [_, _, ow] = self.g.output;
        let [kh, kw] = self.g.kernel;
        let [sh, sw] = self.g.strides;
        let (q, hw) = (t.positions(ow), h * w);
        let cols = t.nb * q;
        // One block of kh·kw rows per input channel, filled in parallel.
        col[..self.cg * kh * kw * cols]
            .par_chunks_mut(kh * kw * cols)
            .enumerate()
            .for_each(|(ci, block)| {
                for ni in 0..t.nb {
                    let base = ((t.n0 + ni) * c + c0 + ci) * hw;
                    let plane = &xs[base..base + hw];
                    for (ki, th) in self.th.iter().enumerate() {
                        let (lo, hi, ih0) = self.rows(th, t);
                        for (kj, tw) in self.tw.iter().enumerate() {
                            let r = ki * kw + kj;
                            let dst = &mut block[r * cols + ni * q..][..q];
                            dst[..(lo - t.r0) * ow].fill(A::zero());
                            dst[(hi - t.r0) * ow..].fill(A::zero());
                            let n_w = tw.hi - tw.lo;
                            for (step, drow) in dst[(lo - t.r0) * ow..(hi - t.r0) * ow]
                                .chunks_exact_mut(ow)
                                .enumerate()
                            {
                                let ih = ih0 + step * sh;
                                drow[..tw.lo].fill(A::zero());
                                drow[tw.hi..].fill(A::zero());
                                let src = &plane[ih * w + tw.first..];
                                if sw == 1 {
                                    drow[tw.lo..tw.hi].copy_from_slice(&src[..n_w]);
                                } else {
                                    for (d, s) in
                                        drow[tw.lo..tw.hi].iter_mut().zip(src.iter().step_by(sw))
                                    {
                                        *d = *s;
                                    }
                                }
                            }
                        }
                    }
                }
            });
    }

    /// Adds the columns `col` (`[cg·kh·kw, nb·q]`) of the tile back onto channels `c0..c0+cg`
    /// of `out` (`[N, C, H, W]`, contiguous); entries of padded positions are dropped.
    fn col2im(&self, col: &[f32], out: &mut [f32], t: &Tile, c0: usize) {
        let [c, h, w] = self.g.input;
        let [_, _, ow] = self.g.output;
        let [kh, kw] = self.g.kernel;
        let [sh, sw] = self.g.strides;
        let (q, hw) = (t.positions(ow), h * w);
        let cols = t.nb * q;
        for ni in 0..t.nb {
            let base = ((t.n0 + ni) * c + c0) * hw;
            // The planes of one image's channels, in parallel.
            out[base..base + self.cg * hw]
                .par_chunks_mut(hw)
                .enumerate()
                .for_each(|(ci, plane)| {
                    for (ki, th) in self.th.iter().enumerate() {
                        let (lo, hi, ih0) = self.rows(th, t);
                        for (kj, tw) in self.tw.iter().enumerate() {
                            let r = (ci * kh + ki) * kw + kj;
                            let src = &col[r * cols + ni * q..][..q];
                            for (step, srow) in src[(lo - t.r0) * ow..(hi - t.r0) * ow]
                                .chunks_exact(ow)
                                .enumerate()
                            {
                                let ih = ih0 + step * sh;
                                let dst = &mut plane[ih * w + tw.first..];
                                let srow = &srow[tw.lo..tw.hi];
                                if sw == 1 {
                                    for (d, s) in dst.iter_mut().zip(srow) {
                                        *d += *s;
                                    }
                                } else {
                                    for (d, s) in dst.iter_mut().step_by(sw).zip(srow) {
                                        *d += *s;
                                    }
                                }
                            }
                        }
                    }
                });
        }
    }
}

/// The convolution without bias:
/// `y[n, o, p, q] = Σ_{c ∈ group(o), a, b} w[o, c, a, b] · x[n, c, p·sh + a·dh − top, q·sw + b·dw − left]`,
/// with `x` read as 0 outside the image. `x` is `[N, C, H, W]`, `w` is `[O, C/groups, kh, kw]`,
/// the result `[N, O, OH, OW]`.
///
/// Generic over the element type: f32 for relevance, f64 where a rule needs exact denominators.
pub fn conv2d_forward<A: LinalgScalar + Send + Sync>(
    x: ArrayView4<A>,
    w: ArrayView4<A>,
    g: &ConvGeometry,
) -> Array4<A> {
    conv2d_forward_budget(x, w, g, COL_BUDGET)
}

fn conv2d_forward_budget<A: LinalgScalar + Send + Sync>(
    x: ArrayView4<A>,
    w: ArrayView4<A>,
    g: &ConvGeometry,
    budget: usize,
) -> Array4<A> {
    let n = g.check("conv2d_forward", x.shape(), g.input);
    g.check_weight("conv2d_forward", w.shape());
    let [o, oh, ow] = g.output;
    if n == 0 {
        return Array4::<A>::zeros((n, o, oh, ow));
    }
    let cols = Cols::new(g);
    let (cg, og, kg, p) = (cols.cg, cols.og, cols.kg, cols.p);
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    let w = w.as_standard_layout();
    if std::any::TypeId::of::<A>() == std::any::TypeId::of::<f32>()
        && let Some(tile) = g.winograd(n)
    {
        // SAFETY: A is f32 (checked above), so these are the same standard-layout slices
        // retyped, and the result is an array of A.
        unsafe {
            let xs = std::slice::from_raw_parts(xs.as_ptr() as *const f32, xs.len());
            let ws = w.as_slice().expect("standard layout");
            let ws = std::slice::from_raw_parts(ws.as_ptr() as *const f32, ws.len());
            let out = std::mem::ManuallyDrop::new(g.winograd_run(
                winograd::Source::Plain(xs),
                ws,
                n,
                false,
                tile,
                None,
            ));
            return std::ptr::read(&*out as *const Array4<f32> as *const Array4<A>);
        }
    }
    if std::any::TypeId::of::<A>() == std::any::TypeId::of::<f32>()
        && g.for_backend(n)
        && let Some(b) = conv_backend()
    {
        // SAFETY: A is f32 (checked above), so these are the same standard-layout arrays
        // retyped.
        let (xv, wv) = unsafe {
            (
                ArrayView4::from_shape_ptr(x.raw_dim(), x.as_ptr() as *const f32),
                ArrayView4::from_shape_ptr(w.raw_dim(), w.as_ptr() as *const f32),
            )
        };
        // SAFETY: A is f32 (checked above).
        let out = unsafe { from_backend(Ix4(n, o, oh, ow), |ov| b.forward(xv, wv, g, ov)) };
        if let Some(out) = out {
            return out;
        }
    }
    let mut out = Array4::<A>::zeros((n, o, oh, ow));
    let w2 = w
        .view()
        .into_shape_with_order((o, kg))
        .expect("standard layout");
    let [_, _, ow] = g.output;
    let tiles = tiles(n, kg, oh, ow, budget);
    let most = tiles
        .iter()
        .map(|t| t.nb * t.positions(ow))
        .max()
        .unwrap_or(0);
    let mut col = vec![A::zero(); kg * most];
    let mut res = vec![A::zero(); og * most];
    let outs = out.as_slice_mut().expect("fresh array");
    for t in &tiles {
        let q = t.positions(ow);
        let ncol = t.nb * q;
        for gi in 0..g.groups {
            cols.im2col(xs, &mut col[..kg * ncol], t, gi * cg);
            let colv = ArrayView2::from_shape((kg, ncol), &col[..kg * ncol]).expect("sized");
            let mut resv =
                ArrayViewMut2::from_shape((og, ncol), &mut res[..og * ncol]).expect("sized");
            let wg = w2.slice(s![gi * og..(gi + 1) * og, ..]);
            matmul(wg, colv, &mut resv);
            for (oi, row) in res[..og * ncol].chunks_exact(ncol).enumerate() {
                for (ni, src) in row.chunks_exact(q).enumerate() {
                    let dst = ((t.n0 + ni) * o + gi * og + oi) * p + t.r0 * ow;
                    outs[dst..dst + q].copy_from_slice(src);
                }
            }
        }
    }
    out
}

/// The transpose of [`conv2d_forward`] (the gradient of `Σ s·conv(x)` w.r.t. `x`):
/// `r[m, i] = Σ_j w_ij s[m, j]` over the output units `j` that read input position `i`, i.e.
/// `r[m, c, y, x] = Σ_{o ∈ group(c), a, b, p, q : p·sh + a·dh − top = y, q·sw + b·dw − left = x}
/// w[o, c, a, b] · s[m, o, p, q]`. Contributions to padding are dropped. `s` is `[M, O, OH, OW]`
/// (any `M`), `w` is `[O, C/groups, kh, kw]`, the result `[M, C, H, W]`.
pub fn conv2d_transpose(s: ArrayView4<f32>, w: ArrayView4<f32>, g: &ConvGeometry) -> Array4<f32> {
    conv2d_transpose_budget(s, w, g, COL_BUDGET)
}

/// [`conv2d_transpose`] of a relevance the caller hands over: where the transpose has the
/// relevance's own shape (a convolution that keeps its channel count and size) and the
/// [`Sconv`] in use can, the result is written over `s`, which saves a fresh array of its size.
pub fn conv2d_transpose_owned(
    mut s: Array4<f32>,
    w: ArrayView4<f32>,
    g: &ConvGeometry,
) -> Array4<f32> {
    let m = g.check("conv2d_transpose", s.shape(), g.output);
    g.check_weight("conv2d_transpose", w.shape());
    if g.input == g.output
        && s.is_standard_layout()
        && g.for_backend(m)
        && g.winograd(m).is_none()
        && let Some(b) = conv_backend()
        && b.transpose_in_place(s.view_mut(), w.as_standard_layout().view(), g)
    {
        return s;
    }
    conv2d_transpose(s.view(), w, g)
}

fn conv2d_transpose_budget(
    s: ArrayView4<f32>,
    w: ArrayView4<f32>,
    g: &ConvGeometry,
    budget: usize,
) -> Array4<f32> {
    let m = g.check("conv2d_transpose", s.shape(), g.output);
    g.check_weight("conv2d_transpose", w.shape());
    let [c, h, wd] = g.input;
    let o = g.output[0];
    if m == 0 {
        return Array4::<f32>::zeros((m, c, h, wd));
    }
    let cols = Cols::new(g);
    let (cg, og, kg, p) = (cols.cg, cols.og, cols.kg, cols.p);
    let s = s.as_standard_layout();
    let ss = s.as_slice().expect("standard layout");
    let w = w.as_standard_layout();
    if let Some(tile) = g.winograd(m) {
        return g.winograd_run(
            winograd::Source::Plain(ss),
            w.as_slice().expect("standard layout"),
            m,
            true,
            tile,
            None,
        );
    }
    if g.for_backend(m)
        && let Some(b) = conv_backend()
        // SAFETY: f32.
        && let Some(out) = unsafe {
            from_backend(Ix4(m, c, h, wd), |ov| b.transpose(s.view(), w.view(), g, ov))
        }
    {
        return out;
    }
    let mut out = Array4::<f32>::zeros((m, c, h, wd));
    let w2 = w
        .view()
        .into_shape_with_order((o, kg))
        .expect("standard layout");
    let [_, oh, ow] = g.output;
    let tiles = tiles(m, kg, oh, ow, budget);
    let most = tiles
        .iter()
        .map(|t| t.nb * t.positions(ow))
        .max()
        .unwrap_or(0);
    let mut col = vec![0f32; kg * most];
    let mut sbuf = vec![0f32; og * most];
    let outs = out.as_slice_mut().expect("fresh array");
    for t in &tiles {
        let q = t.positions(ow);
        let ncol = t.nb * q;
        for gi in 0..g.groups {
            for (oi, row) in sbuf[..og * ncol].chunks_exact_mut(ncol).enumerate() {
                for (ni, dst) in row.chunks_exact_mut(q).enumerate() {
                    let src = ((t.n0 + ni) * o + gi * og + oi) * p + t.r0 * ow;
                    dst.copy_from_slice(&ss[src..src + q]);
                }
            }
            let sv = ArrayView2::from_shape((og, ncol), &sbuf[..og * ncol]).expect("sized");
            let mut colv =
                ArrayViewMut2::from_shape((kg, ncol), &mut col[..kg * ncol]).expect("sized");
            let wgt = w2.slice(s![gi * og..(gi + 1) * og, ..]).reversed_axes();
            matmul(wgt, sv, &mut colv);
            cols.col2im(&col[..kg * ncol], outs, t, gi * cg);
        }
    }
    out
}

/// `x ⊙ `[`conv2d_transpose`]`(s, w, g)` in one pass where the transpose runs by Winograd's
/// algorithm (see [`Conv3x3`]) or, into at most 8 channels, by direct sums: row `m` of the
/// result is multiplied by row `m / maps` of `x` (`[M / maps, C, H, W]`) as it is written.
/// None, having done nothing, elsewhere ([`ConvGeometry::transposes_fused`]).
pub fn conv2d_transpose_mul(
    s: ArrayView4<f32>,
    w: ArrayView4<f32>,
    g: &ConvGeometry,
    x: ArrayView4<f32>,
    maps: usize,
) -> Option<Array4<f32>> {
    transpose_mul(s, None, w, g, x, maps)
}

/// How a relevance `r` (`[M, O, OH, OW]`) is divided before a transpose, as the rules do: row
/// `m` by row `m / maps` of the denominators `d` (`[M / maps, O, OH, OW]`), `r / stab(d + b)`
/// with a bias `b` per output channel.
#[derive(Debug, Clone, Copy)]
pub struct Divide<'a> {
    /// The denominators.
    pub d: ArrayView4<'a, f32>,
    /// The stabiliser.
    pub stab: Stabilizer,
    /// One value per output channel, added to `d` (only with `f64`).
    pub bias: Option<&'a [f64]>,
    /// The sum and the division in f64 (then rounded to f32); in f32 otherwise.
    pub f64: bool,
}

/// `x ⊙ `[`conv2d_transpose`]`(r / stab(d + b), w, g)` in one pass where
/// [`conv2d_transpose_mul`] runs: `r` divided as `divide` says as it is read, the result
/// multiplied as [`conv2d_transpose_mul`]'s as it is written. None, having done nothing,
/// elsewhere.
pub fn conv2d_ratio_transpose_mul(
    r: ArrayView4<f32>,
    divide: Divide<'_>,
    w: ArrayView4<f32>,
    g: &ConvGeometry,
    x: ArrayView4<f32>,
    maps: usize,
) -> Option<Array4<f32>> {
    transpose_mul(r, Some(divide), w, g, x, maps)
}

fn transpose_mul(
    s: ArrayView4<f32>,
    divide: Option<Divide<'_>>,
    w: ArrayView4<f32>,
    g: &ConvGeometry,
    x: ArrayView4<f32>,
    maps: usize,
) -> Option<Array4<f32>> {
    let what = "conv2d_transpose_mul";
    let m = g.check(what, s.shape(), g.output);
    g.check_weight(what, w.shape());
    let images = g.check(what, x.shape(), g.input);
    assert!(
        maps > 0 && images * maps == m,
        "{what}: {m} relevance rows for {images} images of {maps} maps"
    );
    if let Some(dv) = &divide {
        assert_eq!(
            g.check(what, dv.d.shape(), g.output),
            images,
            "{what}: denominators"
        );
        assert!(
            dv.bias.is_none_or(|b| dv.f64 && b.len() == g.output[0]),
            "{what}: a bias needs f64 and one value per output channel"
        );
    }
    let tile = g.winograd(m);
    if tile.is_none() && !g.narrow(m) {
        return None;
    }
    let (s, w, x) = (
        s.as_standard_layout(),
        w.as_standard_layout(),
        x.as_standard_layout(),
    );
    let d = divide.as_ref().map(|dv| dv.d.as_standard_layout());
    let ss = s.as_slice().expect("standard layout");
    let source = match (&divide, &d) {
        (Some(dv), Some(d)) => winograd::Source::Ratio {
            r: ss,
            z: d.as_slice().expect("standard layout"),
            maps,
            stab: dv.stab,
            bias: dv.bias,
            wide: dv.f64,
        },
        _ => winograd::Source::Plain(ss),
    };
    let scale = Some(winograd::Scale {
        x: x.as_slice().expect("standard layout"),
        maps,
    });
    let w = w.as_slice().expect("standard layout");
    Some(match tile {
        Some(tile) => g.winograd_run(source, w, m, true, tile, scale),
        None => g.narrow_run(source, w, m, scale),
    })
}

/// Adds a per-channel bias to an NCHW tensor: `y[n, o, :, :] += b[o]`.
pub fn add_channel_bias(mut y: ArrayViewMut4<f32>, b: ArrayView1<f32>) {
    assert_eq!(
        y.shape()[1],
        b.len(),
        "add_channel_bias: {} channels, {} biases",
        y.shape()[1],
        b.len()
    );
    for mut image in y.axis_iter_mut(Axis(0)) {
        for (mut plane, &bv) in image.axis_iter_mut(Axis(0)).zip(b.iter()) {
            plane += bv;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dense
// ---------------------------------------------------------------------------------------------

/// The dense layer without bias: `y[n, o] = Σ_i x[n, i] · w[o, i]` (`x` is `[N, in]`, `w` is
/// `[out, in]`, the result `[N, out]`). Generic over f32 and f64.
pub fn dense_forward<A: LinalgScalar>(x: ArrayView2<A>, w: ArrayView2<A>) -> Array2<A> {
    assert_eq!(
        x.ncols(),
        w.ncols(),
        "dense_forward: input has {} features, weight takes {}",
        x.ncols(),
        w.ncols()
    );
    let mut out = Array2::zeros((x.nrows(), w.nrows()));
    matmul(x, w.t(), &mut out.view_mut());
    out
}

/// The transpose of [`dense_forward`]: `r[m, i] = Σ_o w[o, i] · s[m, o]` (`s` is `[M, out]`,
/// `w` is `[out, in]`, the result `[M, in]`).
pub fn dense_transpose(s: ArrayView2<f32>, w: ArrayView2<f32>) -> Array2<f32> {
    assert_eq!(
        s.ncols(),
        w.nrows(),
        "dense_transpose: signal has {} outputs, weight has {}",
        s.ncols(),
        w.nrows()
    );
    if let Some(out) = streamed(s, w, &|v| v) {
        return out;
    }
    let mut out = Array2::zeros((s.nrows(), w.ncols()));
    matmul(s, w, &mut out.view_mut());
    out
}

/// Weights of at least this many values go to the streamed transposes (see [`streamed`]).
const STREAM_MIN_WEIGHTS: usize = 1 << 20;

/// `s · f(w)` by the streamed transpose (`stream`) where it runs: a large weight (at least
/// [`STREAM_MIN_WEIGHTS`] values) and a few signal rows; None otherwise.
fn streamed(
    s: ArrayView2<f32>,
    w: ArrayView2<f32>,
    f: &(impl Fn(f32) -> f32 + Sync),
) -> Option<Array2<f32>> {
    let (m, n) = (s.nrows(), w.ncols());
    if w.len() < STREAM_MIN_WEIGHTS || !crate::stream::available(m) {
        return None;
    }
    // the signal by weight row, as the streamed sums read it
    let (st, w) = (
        s.t().as_standard_layout().into_owned(),
        w.as_standard_layout(),
    );
    let mut out = Array2::<f32>::uninit((m, n));
    crate::stream::transpose(
        st.as_slice().expect("standard layout"),
        m,
        w.as_slice().expect("standard layout"),
        n,
        f,
        out.as_slice_mut().expect("fresh array"),
    );
    // SAFETY: `stream::transpose` writes every value.
    Some(unsafe { out.assume_init() })
}

/// Weight rows per block of the `_mapped` dense kernels: a block holds at most this many
/// elements (4 MB of f32), whatever the input width.
const MAPPED_BLOCK: usize = 1 << 20;

/// The row blocks of a `[out, in]` weight for the `_mapped` kernels.
fn weight_blocks(out: usize, inp: usize) -> impl Iterator<Item = (usize, usize)> {
    let rows = (MAPPED_BLOCK / inp.max(1)).clamp(1, out.max(1));
    (0..out)
        .step_by(rows)
        .map(move |o0| (o0, (o0 + rows).min(out)))
}

/// The weight blocks of the `_mapped` Dense kernels go to this many ranges of consecutive
/// blocks, whatever the number of workers. The ranges run in parallel; a transpose sums each
/// range's blocks in order and then adds the ranges' sums in order, so its values do not
/// depend on the workers.
const MAPPED_RANGES: usize = 16;

/// The row blocks of a `[out, in]` weight, in at most [`MAPPED_RANGES`] ranges of consecutive
/// blocks.
fn weight_ranges(out: usize, inp: usize) -> Vec<Vec<(usize, usize)>> {
    let blocks: Vec<_> = weight_blocks(out, inp).collect();
    let per = blocks.len().div_ceil(MAPPED_RANGES).max(1);
    blocks.chunks(per).map(<[_]>::to_vec).collect()
}

/// `out = lhs · rhs`, or `out += lhs · rhs` with `accumulate`, on the calling thread (the
/// `_mapped` Dense kernels run one weight range per worker).
fn product_here(
    lhs: ArrayView2<f32>,
    rhs: ArrayView2<f32>,
    out: &mut ArrayViewMut2<f32>,
    accumulate: bool,
) {
    let (m, k) = lhs.dim();
    let n = rhs.ncols();
    assert!(
        rhs.nrows() == k && out.dim() == (m, n),
        "product_here: [{m}, {k}] × {:?} into {:?}",
        rhs.dim(),
        out.dim()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            out.fill(0.0);
        }
        return;
    }
    gemm_into(lhs, rhs, out, accumulate, gemm::Parallelism::None);
}

/// [`dense_forward`] with the weight `f(w)` applied element-wise, without making `f(w)`
/// whole: the weight is mapped one block of rows at a time into a reused buffer, the blocks'
/// ranges in parallel.
pub fn dense_forward_mapped(
    x: ArrayView2<f32>,
    w: ArrayView2<f32>,
    f: impl Fn(f32) -> f32 + Sync,
) -> Array2<f32> {
    assert_eq!(
        x.ncols(),
        w.ncols(),
        "dense_forward_mapped: input has {} features, weight takes {}",
        x.ncols(),
        w.ncols()
    );
    let (out, inp) = w.dim();
    if w.len() >= STREAM_MIN_WEIGHTS && crate::stream::fast() {
        let (x, w) = (x.as_standard_layout(), w.as_standard_layout());
        let mut y = Array2::<f32>::zeros((x.nrows(), out));
        crate::stream::forward(
            x.as_slice().expect("standard layout"),
            x.nrows(),
            w.as_slice().expect("standard layout"),
            inp,
            &f,
            y.as_slice_mut().expect("fresh array"),
        );
        return y;
    }
    let xt = x.t().as_standard_layout().into_owned();
    // yᵀ, range by range
    let parts: Vec<Array2<f32>> = weight_ranges(out, inp)
        .into_par_iter()
        .map(|range| {
            let rows = range.iter().map(|&(o0, o1)| o1 - o0).sum();
            let mut yt = Array2::<f32>::zeros((rows, x.nrows()));
            let mut buf = Vec::new();
            let mut at = 0;
            for (o0, o1) in range {
                let block = mapped_block(w, o0, o1, &f, &mut buf);
                let mut part = yt.slice_mut(s![at..at + (o1 - o0), ..]);
                block_forward(block, xt.view(), &mut part);
                at += o1 - o0;
            }
            yt
        })
        .collect();
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    match views.is_empty() {
        true => Array2::zeros((x.nrows(), out)),
        false => ndarray::concatenate(Axis(0), &views)
            .expect("same widths")
            .reversed_axes()
            .as_standard_layout()
            .into_owned(),
    }
}

/// `block · xt` (`[rows, inp]` by `[inp, n]`) into `out` (`[rows, n]`): a mapped block's
/// outputs, over its contiguous rows (a few times faster than `x · blockᵀ` for the few rows
/// of a batch, docs/performance.md, eleventh session).
fn block_forward(block: ArrayView2<f32>, xt: ArrayView2<f32>, out: &mut ArrayViewMut2<f32>) {
    product_here(block, xt, out, false);
}

/// `Σ_blocks signal(o0, o1, block) · block` over the mapped blocks of `w` (`[out, in]`), for a
/// signal of `m` rows: each range of blocks summed on one worker, the ranges' sums added in
/// order (see [`MAPPED_RANGES`]).
fn mapped_transpose(
    w: ArrayView2<f32>,
    f: &(impl Fn(f32) -> f32 + Sync),
    m: usize,
    signal: impl Fn(usize, usize, ArrayView2<f32>) -> Array2<f32> + Sync,
) -> Array2<f32> {
    let (out, inp) = w.dim();
    let sums: Vec<Array2<f32>> = weight_ranges(out, inp)
        .into_par_iter()
        .map(|range| {
            let mut g = Array2::<f32>::zeros((m, inp));
            let mut buf = Vec::new();
            for (i, (o0, o1)) in range.into_iter().enumerate() {
                let block = mapped_block(w, o0, o1, f, &mut buf);
                let sb = signal(o0, o1, block);
                product_here(sb.view(), block, &mut g.view_mut(), i > 0);
            }
            g
        })
        .collect();
    let mut sums = sums.into_iter();
    let mut g = sums.next().unwrap_or_else(|| Array2::zeros((m, inp)));
    for p in sums {
        g += &p;
    }
    g
}

/// [`dense_transpose`] with the weight `f(w)` applied element-wise, one block of rows at a
/// time (see [`dense_forward_mapped`]).
pub fn dense_transpose_mapped(
    s: ArrayView2<f32>,
    w: ArrayView2<f32>,
    f: impl Fn(f32) -> f32 + Sync,
) -> Array2<f32> {
    assert_eq!(
        s.ncols(),
        w.nrows(),
        "dense_transpose_mapped: signal has {} outputs, weight has {}",
        s.ncols(),
        w.nrows()
    );
    if let Some(out) = streamed(s, w, &f) {
        return out;
    }
    mapped_transpose(w, &f, s.nrows(), |o0, o1, _| {
        s.slice(s![.., o0..o1]).to_owned()
    })
}

/// [`dense_transpose_mapped`]`(s, w, f)` for the rules' ratio `s = r / stab(sign · x·f(w)ᵀ + b)`
/// (row `m` of `r`, `[M, out]`, divided by row `m / maps` of the denominators, the sum and the
/// division in f64 and a bias `b` per output unit), without making `f(w)` whole: two passes
/// over the weight where the transposes are streamed (a large weight, a few rows), one
/// otherwise (each block of rows of `f(w)` mapped once serves the denominators, the division
/// and the transpose). Gives the same values as those three steps one after the other.
#[allow(clippy::too_many_arguments)]
pub fn dense_ratio_transpose_mapped(
    r: ArrayView2<f32>,
    x: ArrayView2<f32>,
    w: ArrayView2<f32>,
    f: impl Fn(f32) -> f32 + Sync,
    sign: f32,
    stab: crate::Stabilizer,
    bias: Option<&[f64]>,
    maps: usize,
) -> Array2<f32> {
    let what = "dense_ratio_transpose_mapped";
    let (out, inp) = w.dim();
    let (n, m) = (x.nrows(), r.nrows());
    assert!(
        x.ncols() == inp && r.ncols() == out && maps > 0 && n * maps == m,
        "{what}: input {:?}, relevance {:?}, weight {:?}, {maps} maps",
        x.dim(),
        r.dim(),
        w.dim()
    );
    assert!(
        bias.is_none_or(|b| b.len() == out),
        "{what}: one bias per output unit"
    );
    // Where the transpose is streamed: the denominators in one pass over the weight, the
    // ratios, and the transpose in a second.
    if crate::stream::available(m) && w.len() >= STREAM_MIN_WEIGHTS {
        let d = dense_forward_mapped(x, w, &f);
        let ratio = Array2::from_shape_fn((m, out), |(mi, u)| {
            let b = bias.map_or(0.0, |b| b[u]);
            stab.divide_f64(r[[mi, u]], f64::from(sign * d[[mi / maps, u]]) + b)
        });
        return streamed(ratio.view(), w, &f).expect("streamed (checked above)");
    }
    // Each block's denominators and ratios as `dense_forward_mapped` and the rules' division
    // make them, then the same sums as `dense_transpose_mapped`: the same values.
    let xt = x.t().as_standard_layout().into_owned();
    mapped_transpose(w, &f, m, |o0, o1, block| {
        let mut dt = Array2::<f32>::zeros((o1 - o0, n));
        block_forward(block, xt.view(), &mut dt.view_mut());
        if sign != 1.0 {
            dt.mapv_inplace(|v| v * sign);
        }
        Array2::from_shape_fn((m, o1 - o0), |(mi, j)| {
            let u = o0 + j;
            let b = bias.map_or(0.0, |b| b[u]);
            stab.divide_f64(r[[mi, u]], f64::from(dt[[j, mi / maps]]) + b)
        })
    })
}

/// Rows `o0..o1` of `w` mapped by `f`, in `buf`.
fn mapped_block<'b>(
    w: ArrayView2<f32>,
    o0: usize,
    o1: usize,
    f: &(impl Fn(f32) -> f32 + Sync),
    buf: &'b mut Vec<f32>,
) -> ArrayView2<'b, f32> {
    let inp = w.ncols();
    buf.clear();
    buf.resize((o1 - o0) * inp, 0.0);
    buf.par_chunks_mut(inp).enumerate().for_each(|(i, dst)| {
        // Zip runs a contiguous row as a slice, so that the loop vectorises.
        ndarray::Zip::from(ndarray::ArrayViewMut1::from(dst))
            .and(w.row(o0 + i))
            .for_each(|d, &v| *d = f(v));
    });
    ArrayView2::from_shape((o1 - o0, inp), &buf[..]).expect("sized")
}

// ---------------------------------------------------------------------------------------------
// Pooling
// ---------------------------------------------------------------------------------------------

/// The geometry of one 2-D pool: per-sample input `[C, H, W]`, output `[C, OH, OW]`, window,
/// strides, padding `[top, left, bottom, right]`, dilations, `ceil_mode` and, for average pools,
/// `count_include_pad`. Padding never takes part in a window's max or sum; it only counts in an
/// average's divisor `n_j` when `count_include_pad` is set.
///
/// `n_j` follows ONNX Runtime (and PyTorch): with `count_include_pad`, the positions of window
/// `j` inside `[−pad_begin, len + pad_end)` per axis (a `ceil_mode` window that runs past the end
/// padding does not count the overhang); without it, the real positions only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolGeometry {
    channels: usize,
    input: [usize; 2],
    output: [usize; 2],
    kernel: [usize; 2],
    strides: [usize; 2],
    pads: [usize; 4],
    dilations: [usize; 2],
    ceil_mode: bool,
    count_include_pad: bool,
}

impl PoolGeometry {
    /// The geometry of `op` on a per-sample input of shape `input` (`[C, H, W]`). `op` is an
    /// [`Op::MaxPool`], [`Op::AvgPool`], [`Op::GlobalAvgPool`] or [`Op::GlobalMaxPool`]; the output
    /// size is ONNX's (with `ceil_mode`, a last window that would start in the end padding is
    /// dropped).
    pub fn new(op: &Op, input: &[usize]) -> Result<Self, KernelError> {
        let kind = op.kind();
        let &[c, h, w] = input else {
            return Err(KernelError::new(
                kind,
                format!("input must have per-sample shape [C, H, W], got {input:?}"),
            ));
        };
        let (kernel, strides, pads, dilations, ceil_mode, count_include_pad) = match *op {
            Op::MaxPool {
                kernel,
                strides,
                pads,
                dilations,
                ceil_mode,
            } => (kernel, strides, pads, dilations, ceil_mode, false),
            Op::AvgPool {
                kernel,
                strides,
                pads,
                count_include_pad,
                ceil_mode,
            } => (kernel, strides, pads, [1, 1], ceil_mode, count_include_pad),
            Op::GlobalAvgPool | Op::GlobalMaxPool => {
                if h == 0 || w == 0 {
                    return Err(KernelError::new(kind, "empty input"));
                }
                return Ok(Self::global(c, h, w));
            }
            _ => {
                return Err(KernelError::new(
                    kind,
                    "a pool geometry needs a MaxPool, AvgPool, GlobalAvgPool or GlobalMaxPool op",
                ));
            }
        };
        if kernel.contains(&0) || strides.contains(&0) || dilations.contains(&0) {
            return Err(KernelError::new(
                kind,
                format!(
                    "kernel {kernel:?}, strides {strides:?} and dilations {dilations:?} must be positive"
                ),
            ));
        }
        let err = |m: String| KernelError::new(kind, m);
        let oh = window_out(
            h,
            kernel[0],
            strides[0],
            pads[0],
            pads[2],
            dilations[0],
            ceil_mode,
        )
        .map_err(err)?;
        let ow = window_out(
            w,
            kernel[1],
            strides[1],
            pads[1],
            pads[3],
            dilations[1],
            ceil_mode,
        )
        .map_err(err)?;
        Ok(PoolGeometry {
            channels: c,
            input: [h, w],
            output: [oh, ow],
            kernel,
            strides,
            pads,
            dilations,
            ceil_mode,
            count_include_pad,
        })
    }

    /// The global pool over `[C, H, W]`: one `H×W` window per channel, output `[C, 1, 1]`.
    pub fn global(channels: usize, h: usize, w: usize) -> Self {
        PoolGeometry {
            channels,
            input: [h, w],
            output: [1, 1],
            kernel: [h, w],
            strides: [1, 1],
            pads: [0; 4],
            dilations: [1, 1],
            ceil_mode: false,
            count_include_pad: false,
        }
    }

    /// Per-sample input shape `[C, H, W]`.
    pub fn input_shape(&self) -> [usize; 3] {
        [self.channels, self.input[0], self.input[1]]
    }
    /// Per-sample output shape `[C, OH, OW]`.
    pub fn output_shape(&self) -> [usize; 3] {
        [self.channels, self.output[0], self.output[1]]
    }
    /// Window height and width.
    pub fn kernel(&self) -> [usize; 2] {
        self.kernel
    }
    /// Strides along H and W.
    pub fn strides(&self) -> [usize; 2] {
        self.strides
    }
    /// Padding: top, left, bottom, right.
    pub fn pads(&self) -> [usize; 4] {
        self.pads
    }
    /// Dilations along H and W (always 1 for average pools).
    pub fn dilations(&self) -> [usize; 2] {
        self.dilations
    }
    /// Whether the output size rounds up.
    pub fn ceil_mode(&self) -> bool {
        self.ceil_mode
    }
    /// Whether padded positions count in an average's divisor.
    pub fn count_include_pad(&self) -> bool {
        self.count_include_pad
    }

    /// The same geometry with `count_include_pad` replaced (the op's own value is the default).
    pub fn with_count_include_pad(mut self, count_include_pad: bool) -> Self {
        self.count_include_pad = count_include_pad;
        self
    }

    /// The windows along H and along W.
    fn windows(&self) -> (Vec<Win>, Vec<Win>) {
        let axis = |a: usize| {
            axis_windows(
                self.input[a],
                self.kernel[a],
                self.strides[a],
                self.pads[a],
                self.pads[a + 2],
                self.dilations[a],
                self.output[a],
            )
        };
        (axis(0), axis(1))
    }

    /// Checks `x` (`[N, C, H, W]`, if given) and `r` (`[N·k, C, OH, OW]`); returns `N·k`.
    fn check_pair(&self, what: &str, x: Option<&[usize]>, r: &[usize], k: usize) -> usize {
        let [c, oh, ow] = self.output_shape();
        assert!(
            r.len() == 4 && r[1..] == [c, oh, ow],
            "{what}: relevance of shape {r:?} does not match the pool output [_, {c}, {oh}, {ow}]"
        );
        if let Some(x) = x {
            let [c, h, w] = self.input_shape();
            assert!(
                x.len() == 4 && x[1..] == [c, h, w],
                "{what}: activation of shape {x:?} does not match the pool input [_, {c}, {h}, {w}]"
            );
            assert!(
                k >= 1 && r[0] == x[0] * k,
                "{what}: {} relevance rows for {} images and k = {k}",
                r[0],
                x[0]
            );
        }
        r[0]
    }

    /// Divisor of an average window.
    fn divisor(&self, wh: &Win, ww: &Win) -> usize {
        if self.count_include_pad {
            wh.padded * ww.padded
        } else {
            wh.count * ww.count
        }
    }
}

/// One window along one axis: its real positions are `first + t·dilation` for `t < count`;
/// `padded` also counts the window's positions in the padding (not those beyond it).
#[derive(Debug, Clone, Copy)]
struct Win {
    first: usize,
    count: usize,
    padded: usize,
}

fn axis_windows(
    len: usize,
    k: usize,
    stride: usize,
    pad_begin: usize,
    pad_end: usize,
    dil: usize,
    out: usize,
) -> Vec<Win> {
    (0..out)
        .map(|o| {
            // Positions in padded coordinates (input index + pad_begin).
            let start = o * stride;
            let mut win = Win {
                first: 0,
                count: 0,
                padded: 0,
            };
            for t in 0..k {
                let pos = start + t * dil;
                if pos < len + pad_begin + pad_end {
                    win.padded += 1;
                }
                if pos >= pad_begin && pos < len + pad_begin {
                    if win.count == 0 {
                        win.first = pos - pad_begin;
                    }
                    win.count += 1;
                }
            }
            win
        })
        .collect()
}

/// Calls `f(j, window along H, window along W)` for every output position `j` of a plane, in
/// row-major order.
fn for_each_window(wh: &[Win], ww: &[Win], mut f: impl FnMut(usize, &Win, &Win)) {
    let mut j = 0;
    for a in wh {
        for b in ww {
            f(j, a, b);
            j += 1;
        }
    }
}

/// Iterates the flat indices of the real positions of window `(a, b)`, row-major.
fn window_indices(
    a: &Win,
    b: &Win,
    dil: [usize; 2],
    width: usize,
) -> impl Iterator<Item = usize> + use<> {
    let (a, b) = (*a, *b);
    (0..a.count).flat_map(move |s| {
        let row = (a.first + s * dil[0]) * width;
        (0..b.count).map(move |t| row + b.first + t * dil[1])
    })
}

/// Max pool, winner take all (the gradient of the max): all of `R_j` goes to the first position
/// (row-major within the window) where window `j` of the image's activation attains its maximum;
/// padding never wins; where windows overlap the shares add up. `x` is `[N, C, H, W]`, `r` is
/// `[N·k, C, OH, OW]` (`k` maps per image, row `m` belonging to image `m / k`), the result
/// `[N·k, C, H, W]`. A window with no real position (possible only with unusual padding) passes
/// nothing on.
pub fn maxpool_winner_take_all(
    x: ArrayView4<f32>,
    r: ArrayView4<f32>,
    k: usize,
    g: &PoolGeometry,
) -> Array4<f32> {
    let m = g.check_pair("maxpool_winner_take_all", Some(x.shape()), r.shape(), k);
    let [c, h, w] = g.input_shape();
    let (hw, p) = (h * w, g.output[0] * g.output[1]);
    let (wh, ww) = g.windows();
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    let r = r.as_standard_layout();
    let rs = r.as_slice().expect("standard layout");
    if m == 0 || c == 0 || hw == 0 {
        return Array4::<f32>::zeros((m, c, h, w));
    }
    let len = m * c * hw;
    // Non-overlapping 2×2 windows that tile the plane exactly (VGG's pools): a direct loop.
    let pairs = g.kernel == [2, 2]
        && g.strides == [2, 2]
        && g.dilations == [1, 1]
        && g.pads == [0; 4]
        && g.output[0] * 2 == h
        && g.output[1] * 2 == w;
    let mut out = Vec::with_capacity(len);
    // Image by image, and within an image channel by channel (the k maps' planes of a channel
    // together), in parallel: every (image, channel) writes all of its own planes.
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(k * c * hw)
        .enumerate()
        .for_each(|(ni, image)| {
            let mut by_channel: Vec<Vec<&mut [std::mem::MaybeUninit<f32>]>> =
                (0..c).map(|_| Vec::with_capacity(k)).collect();
            for row in image.chunks_mut(c * hw) {
                for (ci, plane) in row.chunks_mut(hw).enumerate() {
                    by_channel[ci].push(plane);
                }
            }
            by_channel
                .into_par_iter()
                .enumerate()
                .for_each(|(ci, mut planes)| {
                    let plane = &xs[(ni * c + ci) * hw..][..hw];
                    let maps = (0..planes.len()).map(|kk| {
                        let row = (ni * k + kk) * c + ci;
                        &rs[row * p..][..p]
                    });
                    if pairs {
                        // The winners once, for all of the channel's maps.
                        let winners = pair_winners(plane, w);
                        for (op, rp) in planes.iter_mut().zip(maps) {
                            write_pair_winners(&winners, rp, op, w);
                        }
                        return;
                    }
                    let mut arg = vec![usize::MAX; p];
                    for_each_window(&wh, &ww, |j, a, b| {
                        let mut best = usize::MAX;
                        let mut best_v = f32::NEG_INFINITY;
                        for i in window_indices(a, b, g.dilations, w) {
                            let v = plane[i];
                            if best == usize::MAX || v > best_v {
                                best = i;
                                best_v = v;
                            }
                        }
                        arg[j] = best;
                    });
                    for (op, rp) in planes.iter_mut().zip(maps) {
                        for v in op.iter_mut() {
                            v.write(0.0);
                        }
                        // SAFETY: every element of the plane was written just above.
                        let op = unsafe {
                            std::slice::from_raw_parts_mut(op.as_mut_ptr() as *mut f32, hw)
                        };
                        for (&i, &rv) in arg.iter().zip(rp) {
                            if i != usize::MAX {
                                op[i] += rv;
                            }
                        }
                    }
                });
        });
    // SAFETY: the planes above cover all `len` elements, each written in full (directly by
    // `write_pair_winners`, or zeroed before it was added to).
    unsafe { out.set_len(len) };
    Array4::from_shape_vec((m, c, h, w), out).expect("sized")
}

/// For 2×2 windows that tile a plane `w` wide, row-major: the position (0..4, row-major within
/// the window) of each window's first maximum (a later position wins only when strictly
/// greater, as in the general path of [`maxpool_winner_take_all`]).
fn pair_winners(x: &[f32], w: usize) -> Vec<u8> {
    let mut winners = Vec::with_capacity(x.len() / 4);
    for xr in x.chunks_exact(2 * w) {
        let (xt, xb) = xr.split_at(w);
        for (t, b) in xt.chunks_exact(2).zip(xb.chunks_exact(2)) {
            let mut best = 0;
            let mut best_v = t[0];
            for (q, v) in [(1, t[1]), (2, b[0]), (3, b[1])] {
                if v > best_v {
                    best = q;
                    best_v = v;
                }
            }
            winners.push(best);
        }
    }
    winners
}

/// One map's plane of [`maxpool_winner_take_all`] for 2×2 windows that tile a plane `w` wide:
/// every element of `out` is written, `R_j` at window `j`'s winner (from [`pair_winners`]), 0
/// elsewhere.
fn write_pair_winners(winners: &[u8], r: &[f32], out: &mut [std::mem::MaybeUninit<f32>], w: usize) {
    let ow = w / 2;
    let rows = out
        .chunks_exact_mut(2 * w)
        .zip(r.chunks_exact(ow).zip(winners.chunks_exact(ow)));
    for (or, (rr, wr)) in rows {
        let (ot, ob) = or.split_at_mut(w);
        let windows = ot
            .chunks_exact_mut(2)
            .zip(ob.chunks_exact_mut(2))
            .zip(rr.iter().zip(wr));
        for ((o1, o2), (&rv, &best)) in windows {
            let at = |q: u8| if q == best { rv } else { 0.0 };
            o1[0].write(at(0));
            o1[1].write(at(1));
            o2[0].write(at(2));
            o2[1].write(at(3));
        }
    }
}

/// Shared body of the proportional rules: `R_i = Σ_j x_i · R_j · f_j` with `f_j` from the window
/// sum `Σ_window x` and the window's divisor.
fn proportional(
    what: &str,
    x: ArrayView4<f32>,
    r: ArrayView4<f32>,
    k: usize,
    g: &PoolGeometry,
    factor: impl Fn(f32, usize) -> f32,
) -> Array4<f32> {
    let m = g.check_pair(what, Some(x.shape()), r.shape(), k);
    let n = x.shape()[0];
    let [c, h, w] = g.input_shape();
    let (hw, p) = (h * w, g.output[0] * g.output[1]);
    let (wh, ww) = g.windows();
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    let r = r.as_standard_layout();
    let rs = r.as_slice().expect("standard layout");
    let mut out = Array4::<f32>::zeros((m, c, h, w));
    let os = out.as_slice_mut().expect("fresh array");
    let mut f = vec![0f32; p];
    for ni in 0..n {
        for ci in 0..c {
            let plane = &xs[(ni * c + ci) * hw..][..hw];
            for_each_window(&wh, &ww, |j, a, b| {
                let n_j = g.divisor(a, b);
                let sum: f64 = window_indices(a, b, g.dilations, w)
                    .map(|i| f64::from(plane[i]))
                    .sum();
                f[j] = if a.count * b.count == 0 || n_j == 0 {
                    0.0
                } else {
                    factor(sum as f32, n_j)
                };
            });
            for kk in 0..k {
                let row = (ni * k + kk) * c + ci;
                let rp = &rs[row * p..][..p];
                let op = &mut os[row * hw..][..hw];
                let mut j = 0;
                for a in &wh {
                    for b in &ww {
                        let s = rp[j] * f[j];
                        j += 1;
                        if s == 0.0 {
                            continue;
                        }
                        for i in window_indices(a, b, g.dilations, w) {
                            op[i] += plane[i] * s;
                        }
                    }
                }
            }
        }
    }
    out
}

/// Max pool, proportional: `R_i = Σ_j x_i · R_j / stab(Σ_{i' ∈ window j} x_i')`, sums over the
/// real positions of each window (padding takes no share). Shapes as
/// [`maxpool_winner_take_all`].
pub fn maxpool_proportional(
    x: ArrayView4<f32>,
    r: ArrayView4<f32>,
    k: usize,
    g: &PoolGeometry,
    stab: Stabilizer,
) -> Array4<f32> {
    proportional("maxpool_proportional", x, r, k, g, |sum, _| {
        1.0 / stab.apply(sum)
    })
}

/// Average pool, z-rule: with `z_j = (Σ_{i ∈ window j} x_i) / n_j`,
/// `R_i = Σ_j (x_i / n_j) · R_j / stab(z_j)`; `n_j` as [`PoolGeometry`] describes
/// (`count_include_pad`). Shapes as [`maxpool_winner_take_all`].
pub fn avgpool_proportional(
    x: ArrayView4<f32>,
    r: ArrayView4<f32>,
    k: usize,
    g: &PoolGeometry,
    stab: Stabilizer,
) -> Array4<f32> {
    proportional("avgpool_proportional", x, r, k, g, |sum, n_j| {
        let n_j = n_j as f32;
        1.0 / (n_j * stab.apply(sum / n_j))
    })
}

/// Average pool, gradient: `R_i = Σ_{j : i ∈ window j} R_j / n_j` (`n_j` as [`PoolGeometry`]
/// describes). `r` is `[M, C, OH, OW]` (any `M`), the result `[M, C, H, W]`.
pub fn avgpool_gradient(r: ArrayView4<f32>, g: &PoolGeometry) -> Array4<f32> {
    let m = g.check_pair("avgpool_gradient", None, r.shape(), 1);
    let [c, h, w] = g.input_shape();
    let (hw, p) = (h * w, g.output[0] * g.output[1]);
    let (wh, ww) = g.windows();
    let mut inv = Vec::with_capacity(p);
    for_each_window(&wh, &ww, |_, a, b| {
        let n_j = g.divisor(a, b);
        inv.push(if a.count * b.count == 0 || n_j == 0 {
            0.0
        } else {
            1.0 / n_j as f32
        });
    });
    let r = r.as_standard_layout();
    let rs = r.as_slice().expect("standard layout");
    let mut out = Array4::<f32>::zeros((m, c, h, w));
    let os = out.as_slice_mut().expect("fresh array");
    for row in 0..m * c {
        let rp = &rs[row * p..][..p];
        let op = &mut os[row * hw..][..hw];
        let mut j = 0;
        for a in &wh {
            for b in &ww {
                let s = rp[j] * inv[j];
                j += 1;
                for i in window_indices(a, b, g.dilations, w) {
                    op[i] += s;
                }
            }
        }
    }
    out
}

fn global_of(x: &ArrayView4<f32>, what: &str) -> PoolGeometry {
    let sh = x.shape();
    assert!(
        sh[2] > 0 && sh[3] > 0,
        "{what}: activation of shape {sh:?} is empty"
    );
    PoolGeometry::global(sh[1], sh[2], sh[3])
}

/// Global average pool, z-rule: with `z_c = mean_{h,w} x[c, h, w]`,
/// `R[c, h, w] = x[c, h, w] / (H·W) · R_c / stab(z_c)`. `x` is `[N, C, H, W]`, `r` is
/// `[N·k, C, 1, 1]`, the result `[N·k, C, H, W]`.
pub fn global_avgpool_proportional(
    x: ArrayView4<f32>,
    r: ArrayView4<f32>,
    k: usize,
    stab: Stabilizer,
) -> Array4<f32> {
    let g = global_of(&x, "global_avgpool_proportional");
    avgpool_proportional(x, r, k, &g, stab)
}

/// Global average pool, gradient: `R[c, h, w] = R_c / (H·W)`. `r` is `[M, C, 1, 1]`, the result
/// `[M, C, H, W]`.
pub fn global_avgpool_gradient(r: ArrayView4<f32>, h: usize, w: usize) -> Array4<f32> {
    assert!(
        h > 0 && w > 0,
        "global_avgpool_gradient: empty input {h}×{w}"
    );
    let g = PoolGeometry::global(r.shape()[1], h, w);
    avgpool_gradient(r, &g)
}

/// Global max pool, winner take all: all of `R_c` goes to the first (row-major) maximum of
/// `x[c, :, :]`. `x` is `[N, C, H, W]`, `r` is `[N·k, C, 1, 1]`, the result `[N·k, C, H, W]`.
pub fn global_maxpool_winner_take_all(
    x: ArrayView4<f32>,
    r: ArrayView4<f32>,
    k: usize,
) -> Array4<f32> {
    let g = global_of(&x, "global_maxpool_winner_take_all");
    maxpool_winner_take_all(x, r, k, &g)
}

/// Global max pool, proportional: `R[c, h, w] = x[c, h, w] · R_c / stab(Σ_{h,w} x[c, h, w])`.
/// Shapes as [`global_maxpool_winner_take_all`].
pub fn global_maxpool_proportional(
    x: ArrayView4<f32>,
    r: ArrayView4<f32>,
    k: usize,
    stab: Stabilizer,
) -> Array4<f32> {
    let g = global_of(&x, "global_maxpool_proportional");
    maxpool_proportional(x, r, k, &g, stab)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array;

    fn conv(c: usize, h: usize, w: usize, o: usize, groups: usize) -> (Op, ConvGeometry) {
        let op = Op::Conv {
            kernel: [3, 2],
            strides: [2, 1],
            pads: [1, 0, 2, 1],
            dilations: [1, 2],
            groups,
        };
        let g = ConvGeometry::new(&op, &[c, h, w], &[o, c / groups, 3, 2]).unwrap();
        (op, g)
    }

    fn ramp(shape: (usize, usize, usize, usize), k: f32) -> Array4<f32> {
        let len = shape.0 * shape.1 * shape.2 * shape.3;
        Array::from_iter((0..len).map(|i| ((i as f32 * k).sin() * 3.0).round() / 2.0))
            .into_shape_with_order(shape)
            .unwrap()
    }

    /// The Dense transposes of large weights for a few signal rows (1 to 17; weight rows not a
    /// multiple of eight, columns not of sixteen: streamed where the processor can) equal the
    /// f64 sums within 4 f32 epsilons of each output's sum of magnitudes, mapped weights too,
    /// as do the mapped forward sums, and both are the same with one worker and with three.
    #[test]
    fn large_dense_transposes_equal_the_f64_sums() {
        // each output against the f64 sum of its `k` terms, `term(r, c, kk)`
        let check =
            |what: &str, got: &Array2<f32>, k: usize, term: &dyn Fn(usize, usize, usize) -> f64| {
                for ((r, c), &v) in got.indexed_iter() {
                    let (mut sum, mut mag) = (0f64, 0f64);
                    for kk in 0..k {
                        let t = term(r, c, kk);
                        sum += t;
                        mag += t.abs();
                    }
                    let tol = 4.0 * f64::from(f32::EPSILON) * mag + 1e-30;
                    assert!(
                        (f64::from(v) - sum).abs() <= tol,
                        "{what} at ({r}, {c}): {v} against {sum}"
                    );
                }
            };
        let matrix = |rows: usize, cols: usize, k: f32| {
            ramp((rows, cols, 1, 1), k)
                .into_shape_with_order((rows, cols))
                .unwrap()
        };
        for (m, k, n) in [(1, 67, 16_411), (8, 130, 8_100), (17, 1_029, 1_021)] {
            let s = matrix(m, k, 0.37);
            let w = matrix(k, n, 0.91);
            assert!(w.len() >= STREAM_MIN_WEIGHTS);
            let positive = |v: f32| v.max(0.0);
            let what = format!("[{m}, {k}] × [{k}, {n}]");
            let plain = dense_transpose(s.view(), w.view());
            check(&what, &plain, k, &|r, c, kk| {
                f64::from(s[[r, kk]]) * f64::from(w[[kk, c]])
            });
            let mapped = dense_transpose_mapped(s.view(), w.view(), positive);
            check(&what, &mapped, k, &|r, c, kk| {
                f64::from(s[[r, kk]]) * f64::from(positive(w[[kk, c]]))
            });
            // the forward sums of the weight's transpose (`[n, k]`) over the signal's rows
            let wt = w.t().as_standard_layout().into_owned();
            let z = dense_forward_mapped(s.view(), wt.view(), positive);
            check(&format!("forward {what}ᵀ"), &z, k, &|r, c, kk| {
                f64::from(s[[r, kk]]) * f64::from(positive(wt[[c, kk]]))
            });
            for threads in [1, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let again = pool.install(|| dense_transpose(s.view(), w.view()));
                assert!(
                    again
                        .iter()
                        .zip(&plain)
                        .all(|(a, b)| a.to_bits() == b.to_bits())
                );
                let again = pool.install(|| dense_forward_mapped(s.view(), wt.view(), positive));
                assert!(
                    again
                        .iter()
                        .zip(&z)
                        .all(|(a, b)| a.to_bits() == b.to_bits())
                );
            }
        }
    }

    /// The one-pass ratio and transpose of a mapped Dense weight equals the denominators, the
    /// division (as the rules do it: f64, a bias per unit) and the transpose one after the
    /// other, bit for bit, over several weight blocks (in several ranges), with both branch
    /// signs.
    #[test]
    fn dense_ratio_transpose_in_one_pass() {
        let (n, maps, out, inp) = (3, 2, 40, 60_000);
        let w = Array::from_shape_fn((out, inp), |(o, i)| ((o * inp + i) as f32 * 0.37).sin());
        let x = Array::from_shape_fn((n, inp), |(m, i)| ((m * inp + i) as f32 * 0.11).cos().abs());
        let r = Array::from_shape_fn((n * maps, out), |(m, j)| 1.0 + (m * out + j) as f32 * 0.01);
        let bias: Vec<f64> = (0..out).map(|j| (j as f64 * 0.3).sin()).collect();
        let stab = crate::Stabilizer::ZeroGuard(1e-7);
        let f = |v: f32| v.max(0.0);
        assert!(weight_ranges(out, inp).len() > 1);
        let same = |a: &Array2<f32>, b: &Array2<f32>| {
            a.dim() == b.dim() && a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits())
        };
        for sign in [1.0f32, -1.0] {
            let d = dense_forward_mapped(x.view(), w.view(), f).mapv(|v| v * sign);
            let s = Array::from_shape_fn((n * maps, out), |(m, j)| {
                (f64::from(r[[m, j]]) / stab.apply_f64(f64::from(d[[m / maps, j]]) + bias[j]))
                    as f32
            });
            let want = dense_transpose_mapped(s.view(), w.view(), f);
            let got = dense_ratio_transpose_mapped(
                r.view(),
                x.view(),
                w.view(),
                f,
                sign,
                stab,
                Some(&bias),
                maps,
            );
            assert!(same(&got, &want));
        }
    }

    /// The mapped Dense kernels give the same values on one worker as on three, with more
    /// weight blocks than ranges (18 blocks of 1024 rows).
    #[test]
    fn mapped_dense_values_do_not_depend_on_the_workers() {
        let (n, out, inp) = (2, 18 * 1024, 1024);
        assert!(weight_blocks(out, inp).count() > MAPPED_RANGES);
        let w = Array::from_shape_fn((out, inp), |(o, i)| ((o * inp + i) as f32 * 0.37).sin());
        let x = Array::from_shape_fn((n, inp), |(m, i)| ((m * inp + i) as f32 * 0.11).cos());
        let r = Array::from_shape_fn((n, out), |(m, j)| ((m * out + j) as f32 * 0.07).sin());
        let f = |v: f32| v.max(0.0);
        let stab = crate::Stabilizer::ZeroGuard(1e-7);
        let on = |workers: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(workers)
                .build()
                .unwrap();
            pool.install(|| {
                (
                    dense_forward_mapped(x.view(), w.view(), f),
                    dense_transpose_mapped(r.view(), w.view(), f),
                    dense_ratio_transpose_mapped(
                        r.view(),
                        x.view(),
                        w.view(),
                        f,
                        1.0,
                        stab,
                        None,
                        1,
                    ),
                )
            })
        };
        let (one, three) = (on(1), on(3));
        let same = |a: &Array2<f32>, b: &Array2<f32>| {
            a.dim() == b.dim() && a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits())
        };
        assert!(same(&one.0, &three.0), "forward");
        assert!(same(&one.1, &three.1), "transpose");
        assert!(same(&one.2, &three.2), "ratio and transpose");
    }

    /// The default backends with `mode` for the 3×3 convolutions, until the guard is dropped.
    fn conv3x3_mode(mode: Conv3x3) -> BackendGuard {
        use_backends(Backends {
            conv3x3: mode,
            ..Backends::default()
        })
    }

    /// A 3×3, stride-1 convolution from `c` channels of `h × w` to `o`, padded by `pads`.
    fn conv_3x3(c: usize, [h, w]: [usize; 2], o: usize, pads: [usize; 4]) -> ConvGeometry {
        let op = Op::Conv {
            kernel: [3, 3],
            strides: [1, 1],
            pads,
            dilations: [1, 1],
            groups: 1,
        };
        ConvGeometry::new(&op, &[c, h, w], &[o, c, 3, 3]).unwrap()
    }

    /// A 3×3 convolution with padding 1 from 8 channels of 20 × 19 to 16: one Winograd takes.
    fn same_3x3_8_to_16() -> ConvGeometry {
        conv_3x3(8, [20, 19], 16, [1, 1, 1, 1])
    }

    /// Inside a filter scope a weight's Winograd filters are made once and reused while the
    /// weight's bits are the same; a weight changed in place (the same address) gets new ones.
    /// Every result equals the one made without the scope, bit for bit.
    #[test]
    fn kept_filters_are_reused_for_the_same_weights_only() {
        let g = same_3x3_8_to_16();
        let s = ramp((6, 16, 20, 19), 0.53);
        let x = ramp((6, 8, 20, 19), 0.37);
        let mut w = ramp((16, 8, 3, 3), 0.91);
        let _guard = conv3x3_mode(Conv3x3::Winograd);
        if !winograd::fast() {
            return;
        }
        let kept = || FILTERS.with(|c| c.borrow().as_ref().map(|k| k.entries.len()));
        let same = |a: &Array4<f32>, b: &Array4<f32>| {
            a.shape() == b.shape() && a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits())
        };
        let transpose = conv2d_transpose(s.view(), w.view(), &g);
        let map = conv2d_forward(x.view(), w.view(), &g);
        assert_eq!(kept(), None);
        let changed = {
            let _scope = keep_filters();
            assert_eq!(kept(), Some(0));
            for _ in 0..2 {
                assert!(same(&conv2d_transpose(s.view(), w.view(), &g), &transpose));
                assert_eq!(kept(), Some(1));
            }
            // The map's filters are others.
            assert!(same(&conv2d_forward(x.view(), w.view(), &g), &map));
            assert_eq!(kept(), Some(2));
            w[[3, 5, 1, 2]] += 0.5;
            let changed = conv2d_transpose(s.view(), w.view(), &g);
            assert_eq!(kept(), Some(3));
            changed
        };
        assert_eq!(kept(), None);
        assert!(same(&changed, &conv2d_transpose(s.view(), w.view(), &g)));
        assert!(!same(&changed, &transpose));
    }

    /// The transpose multiplied by the activations as it is written equals the transpose
    /// multiplied afterwards, bit for bit, row `m` by image `m / maps`, and so does it with the
    /// relevance divided by the stabilised denominators as it is read; without Winograd's
    /// algorithm in use it declines.
    #[test]
    fn fused_transpose_and_multiplication() {
        let g = same_3x3_8_to_16();
        let (images, maps) = (3, 2);
        let s = ramp((images * maps, 16, 20, 19), 0.53);
        let w = ramp((16, 8, 3, 3), 0.91);
        let x = ramp((images, 8, 20, 19), 0.37);
        assert!(conv2d_transpose_mul(s.view(), w.view(), &g, x.view(), maps).is_none());
        let _guard = conv3x3_mode(Conv3x3::Winograd);
        if !winograd::fast() {
            return;
        }
        let fused = conv2d_transpose_mul(s.view(), w.view(), &g, x.view(), maps).unwrap();
        let mut want = conv2d_transpose(s.view(), w.view(), &g);
        for (m, mut row) in want.outer_iter_mut().enumerate() {
            row *= &x.index_axis(Axis(0), m / maps);
        }
        assert_eq!(fused, want);
        assert_division_as_read(&s, &ramp((images, 16, 20, 19), 0.29), &w, &g, &x, maps);
    }

    /// Dividing the relevance `s` by the denominators `z` (zeros and both signs) as the fused
    /// transpose reads it, as the ε-rule does (f32) and as the rules that recompute their
    /// denominators do (f64, a bias per channel), gives the same values, bit for bit, as
    /// dividing first as the rules' own step does.
    fn assert_division_as_read(
        s: &Array4<f32>,
        z: &Array4<f32>,
        w: &Array4<f32>,
        g: &ConvGeometry,
        x: &Array4<f32>,
        maps: usize,
    ) {
        assert!(z.iter().any(|&v| v == 0.0) && z.iter().any(|&v| v < 0.0));
        let stab = Stabilizer::SignEpsilon(0.25);
        let bias: Vec<f64> = (0..z.shape()[1]).map(|o| o as f64 * 0.125 - 1.0).collect();
        for (b, f64) in [(None, false), (Some(&bias[..]), true)] {
            let divide = Divide {
                d: z.view(),
                stab,
                bias: b,
                f64,
            };
            let mut ratio = s.clone();
            for ((m, o, y, xx), r) in ratio.indexed_iter_mut() {
                let d = z[[m / maps, o, y, xx]];
                *r = match b {
                    None => *r / stab.apply(d),
                    Some(b) => stab.divide_f64(*r, f64::from(d) + b[o]),
                };
            }
            let fused =
                conv2d_ratio_transpose_mul(s.view(), divide, w.view(), g, x.view(), maps).unwrap();
            let want = conv2d_transpose_mul(ratio.view(), w.view(), g, x.view(), maps).unwrap();
            assert!(
                fused
                    .iter()
                    .zip(&want)
                    .all(|(p, q)| p.to_bits() == q.to_bits()),
                "{divide:?}"
            );
        }
    }

    /// The transpose into a few channels (1 to 7, paddings 0 to 2 on each side, rows of 23
    /// pixels, not a whole vector, and of 150, several register blocks of vectors and a rest)
    /// equals the direct f64 sum times the activations, within 4 f32 epsilons of each output's
    /// sum of magnitudes; dividing as it reads equals dividing first, bit for bit (f32, and
    /// f64 with a bias); with the 3×3 convolutions left to the backend it declines.
    #[test]
    fn narrow_transpose_equals_the_direct_sum() {
        let (images, maps, o) = (3, 2, 16);
        let _guard = conv3x3_mode(Conv3x3::Winograd);
        let cases = [
            (3, [1, 1, 1, 1], 23),
            (5, [2, 0, 0, 2], 23),
            (3, [0, 2, 2, 1], 23),
            (1, [1, 1, 1, 1], 150),
            (2, [0, 1, 2, 1], 150),
            (4, [1, 2, 1, 0], 150),
            (6, [1, 1, 1, 1], 150),
            (7, [2, 2, 0, 0], 150),
        ];
        for (c, pads, width) in cases {
            let g = conv_3x3(c, [24, width], o, pads);
            let [_, oh, ow] = g.output_shape();
            let s = ramp((images * maps, o, oh, ow), 0.53);
            let w = ramp((o, c, 3, 3), 0.91);
            let x = ramp((images, c, 24, width), 0.37);
            assert!(g.narrow(images * maps) && g.winograd(images * maps).is_none());
            let got = conv2d_transpose_mul(s.view(), w.view(), &g, x.view(), maps).unwrap();
            for ((m, ci, y, xx), &v) in got.indexed_iter() {
                let (mut sum, mut mag) = (0f64, 0f64);
                for oi in 0..o {
                    for kh in 0..3 {
                        for kw in 0..3 {
                            let (oy, ox) = (y + pads[0], xx + pads[1]);
                            if oy < kh || ox < kw || oy - kh >= oh || ox - kw >= ow {
                                continue;
                            }
                            let t = f64::from(s[[m, oi, oy - kh, ox - kw]])
                                * f64::from(w[[oi, ci, kh, kw]]);
                            sum += t;
                            mag += t.abs();
                        }
                    }
                }
                let f = f64::from(x[[m / maps, ci, y, xx]]);
                let tol = 4.0 * f64::from(f32::EPSILON) * mag * f.abs() + 1e-30;
                assert!(
                    (f64::from(v) - sum * f).abs() <= tol,
                    "c {c} pads {pads:?} at {:?}: {v} against {}",
                    (m, ci, y, xx),
                    sum * f
                );
            }
            assert_division_as_read(&s, &ramp((images, o, oh, ow), 0.29), &w, &g, &x, maps);
            let _direct = use_backends(Backends::default());
            assert!(conv2d_transpose_mul(s.view(), w.view(), &g, x.view(), maps).is_none());
        }
    }

    /// Two weights stacked as input channels (`with_input_channels`) transpose, channel for
    /// channel, to the same values as each weight alone, bit for bit, into a few channels (3)
    /// and by Winograd's algorithm (8): the rules transpose a term's branches together so.
    #[test]
    fn stacked_weights_transpose_like_each_alone() {
        let (images, maps, o) = (3, 2, 16);
        let _guard = conv3x3_mode(Conv3x3::Winograd);
        for c in [3, 8] {
            let g = conv_3x3(c, [24, 23], o, [1, 1, 1, 1]);
            let stacked = g.with_input_channels(2 * c).unwrap();
            assert_eq!(stacked.input_shape(), [2 * c, 24, 23]);
            if !stacked.transposes_fused(images * maps) || !g.transposes_fused(images * maps) {
                return;
            }
            let r = ramp((images * maps, o, 24, 23), 0.53);
            let d = ramp((images, o, 24, 23), 0.29);
            let (w1, w2) = (ramp((o, c, 3, 3), 0.91), ramp((o, c, 3, 3), 0.47));
            let (x1, x2) = (
                ramp((images, c, 24, 23), 0.37),
                ramp((images, c, 24, 23), 0.71),
            );
            let bias: Vec<f64> = (0..o).map(|k| k as f64 * 0.125 - 1.0).collect();
            let divide = Divide {
                d: d.view(),
                stab: Stabilizer::ZeroGuard(1e-7),
                bias: Some(&bias),
                f64: true,
            };
            let w = ndarray::concatenate(Axis(1), &[w1.view(), w2.view()]).unwrap();
            let x = ndarray::concatenate(Axis(1), &[x1.view(), x2.view()]).unwrap();
            let both =
                conv2d_ratio_transpose_mul(r.view(), divide, w.view(), &stacked, x.view(), maps)
                    .unwrap();
            for (k, (wk, xk)) in [(&w1, &x1), (&w2, &x2)].into_iter().enumerate() {
                let alone =
                    conv2d_ratio_transpose_mul(r.view(), divide, wk.view(), &g, xk.view(), maps)
                        .unwrap();
                let part = both.slice(s![.., k * c..(k + 1) * c, .., ..]);
                assert!(
                    part.iter()
                        .zip(&alone)
                        .all(|(p, q)| p.to_bits() == q.to_bits()),
                    "{c} channels, weight {k}"
                );
            }
        }
    }

    /// Chunking several images into one GEMM gives the same numbers as one image at a time.
    #[test]
    fn chunked_equals_unchunked() {
        let (_, g) = conv(4, 7, 6, 6, 2);
        let x = ramp((5, 4, 7, 6), 0.37);
        let w = ramp((6, 2, 3, 2), 0.91);
        let [o, oh, ow] = g.output_shape();
        let s = ramp((5, o, oh, ow), 0.53);
        let whole = conv2d_forward_budget(x.view(), w.view(), &g, usize::MAX);
        let one = conv2d_forward_budget(x.view(), w.view(), &g, 1);
        let two = conv2d_forward_budget(x.view(), w.view(), &g, 2 * 12 * oh * ow);
        assert_eq!(whole, one);
        assert_eq!(whole, two);
        let whole = conv2d_transpose_budget(s.view(), w.view(), &g, usize::MAX);
        let one = conv2d_transpose_budget(s.view(), w.view(), &g, 1);
        let two = conv2d_transpose_budget(s.view(), w.view(), &g, 3 * 12 * oh * ow);
        assert_eq!(whole, one);
        assert_eq!(whole, two);
        // Bands of 2 rows of one image at a time.
        assert!(oh > 2);
        let band = 2 * 12 * ow;
        assert_eq!(
            tiles(5, 12, oh, ow, band)[1],
            Tile {
                n0: 0,
                nb: 1,
                r0: 2,
                r1: 4
            }
        );
        let fwd = conv2d_forward_budget(x.view(), w.view(), &g, band);
        assert_eq!(
            fwd,
            conv2d_forward_budget(x.view(), w.view(), &g, usize::MAX)
        );
        assert_eq!(conv2d_transpose_budget(s.view(), w.view(), &g, band), whole);
    }

    /// Bands of one row with taps whose first real row comes after the band (padding 2 and 3).
    #[test]
    fn thin_bands_with_large_padding() {
        for (k, pad, stride) in [(5, 2, 1), (7, 3, 2), (3, 2, 1)] {
            let op = Op::Conv {
                kernel: [k, k],
                strides: [stride, stride],
                pads: [pad, pad, pad, pad],
                dilations: [1, 1],
                groups: 1,
            };
            let g = ConvGeometry::new(&op, &[2, 9, 8], &[3, 2, k, k]).unwrap();
            let x = ramp((2, 2, 9, 8), 0.41);
            let w = ramp((3, 2, k, k), 0.77);
            let [o, oh, ow] = g.output_shape();
            let s = ramp((2, o, oh, ow), 0.29);
            let whole = conv2d_forward_budget(x.view(), w.view(), &g, usize::MAX);
            assert_eq!(
                conv2d_forward_budget(x.view(), w.view(), &g, 1),
                whole,
                "k {k}"
            );
            let whole = conv2d_transpose_budget(s.view(), w.view(), &g, usize::MAX);
            assert_eq!(
                conv2d_transpose_budget(s.view(), w.view(), &g, 1),
                whole,
                "k {k}"
            );
        }
    }

    #[test]
    fn non_standard_layouts() {
        let (_, g) = conv(2, 5, 5, 2, 1);
        let x = ramp((3, 2, 5, 5), 0.7);
        let w = ramp((2, 2, 3, 2), 0.3);
        let want = conv2d_forward(x.view(), w.view(), &g);
        // The same values behind permuted strides.
        let xt = x
            .view()
            .permuted_axes([1, 0, 2, 3])
            .as_standard_layout()
            .into_owned();
        let xt = xt.view().permuted_axes([1, 0, 2, 3]);
        assert!(!xt.is_standard_layout());
        assert_eq!(conv2d_forward(xt, w.view(), &g), want);
    }

    #[test]
    fn taps_cover_exactly_the_real_positions() {
        for (len, k, s, pad, d) in [
            (5, 3, 2, 1, 1),
            (7, 4, 3, 2, 2),
            (4, 2, 1, 0, 3),
            (3, 3, 1, 2, 1),
        ] {
            let out = window_out(len, k, s, pad, 1, d, false).unwrap();
            for (t, tap) in taps(len, k, s, pad, d, out).iter().enumerate() {
                for o in 0..out {
                    let pos = (o * s + t * d) as isize - pad as isize;
                    let real = pos >= 0 && pos < len as isize;
                    assert_eq!(
                        real,
                        (tap.lo..tap.hi).contains(&o),
                        "{len} {k} {s} {pad} {d}"
                    );
                    if real {
                        assert_eq!(pos as usize, tap.first + (o - tap.lo) * s);
                    }
                }
            }
        }
    }

    #[test]
    fn geometry_errors() {
        let op = Op::Conv {
            kernel: [3, 3],
            strides: [1, 1],
            pads: [0; 4],
            dilations: [1, 1],
            groups: 2,
        };
        assert!(ConvGeometry::new(&op, &[3, 5, 5], &[4, 1, 3, 3]).is_err());
        assert!(ConvGeometry::new(&op, &[4, 5, 5], &[3, 2, 3, 3]).is_err());
        assert!(ConvGeometry::new(&op, &[4, 5, 5], &[4, 2, 3, 2]).is_err());
        assert!(ConvGeometry::new(&op, &[4, 2, 5], &[4, 2, 3, 3]).is_err());
        let e = ConvGeometry::new(&Op::Relu, &[4, 5, 5], &[4, 2, 3, 3]).unwrap_err();
        assert_eq!(e.op, "Relu");
        assert!(PoolGeometry::new(&Op::Dense, &[1, 2, 2]).is_err());
        let g = PoolGeometry::new(&Op::GlobalAvgPool, &[3, 4, 5]).unwrap();
        assert_eq!(g.output_shape(), [3, 1, 1]);
        assert_eq!(g.kernel(), [4, 5]);
    }
}
