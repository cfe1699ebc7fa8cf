//! Test helpers: a seeded RNG, comparisons, and naive reference implementations written from the
//! definitions (plain loops, f64 accumulation), independent of the kernels under test.
#![allow(dead_code)]

use lrp_ir::Op;
use lrp_kernels::Stabilizer;
use ndarray::{Array, Array2, Array4, ArrayD, Dimension, IxDyn, ShapeBuilder};

/// xorshift64* — tiny, seeded, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (self.uniform() + 1.0) * 0.5 * (hi - lo)
    }

    pub fn array<Sh: ShapeBuilder>(&mut self, shape: Sh) -> Array<f32, Sh::Dim> {
        let mut a = Array::zeros(shape);
        a.mapv_inplace(|_| self.uniform());
        a
    }

    /// Values from {-1, -0.5, 0, 0.5, 1, 1.5}: many exact ties and exact zeros.
    pub fn coarse<Sh: ShapeBuilder>(&mut self, shape: Sh) -> Array<f32, Sh::Dim> {
        let mut a = Array::zeros(shape);
        a.mapv_inplace(|_| (self.next_u64() % 6) as f32 * 0.5 - 1.0);
        a
    }
}

/// Asserts `|a − b| ≤ tol · max(1, max|b|)` elementwise.
pub fn assert_close<D: Dimension>(a: &Array<f32, D>, b: &Array<f32, D>, tol: f32, what: &str) {
    assert_eq!(a.shape(), b.shape(), "{what}: shapes differ");
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
        assert!(
            (x - y).abs() <= tol * scale,
            "{what}: element {i} is {x}, expected {y} (scale {scale})"
        );
    }
}

pub fn dot(a: &[f32], b: &[f32]) -> (f64, f64) {
    let mut s = 0.0;
    let mut abs = 0.0;
    for (x, y) in a.iter().zip(b) {
        let p = f64::from(*x) * f64::from(*y);
        s += p;
        abs += p.abs();
    }
    (s, abs)
}

// ------------------------------------------------------------------------------------------
// Convolution
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
pub struct ConvCase {
    pub name: &'static str,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    pub pads: [usize; 4],
    pub dil: [usize; 2],
    pub groups: usize,
}

impl ConvCase {
    pub fn op(&self) -> Op {
        Op::Conv {
            kernel: self.kernel,
            strides: self.strides,
            pads: self.pads,
            dilations: self.dil,
            groups: self.groups,
        }
    }

    pub fn weight_shape(&self) -> [usize; 4] {
        [self.o, self.c / self.groups, self.kernel[0], self.kernel[1]]
    }

    pub fn out_hw(&self) -> [usize; 2] {
        let f = |len: usize, k: usize, s: usize, p0: usize, p1: usize, d: usize| {
            (len + p0 + p1 - (d * (k - 1) + 1)) / s + 1
        };
        [
            f(
                self.h,
                self.kernel[0],
                self.strides[0],
                self.pads[0],
                self.pads[2],
                self.dil[0],
            ),
            f(
                self.w,
                self.kernel[1],
                self.strides[1],
                self.pads[1],
                self.pads[3],
                self.dil[1],
            ),
        ]
    }

    /// The input position (y, x) read by output (p, q) at tap (a, b), if it is not padding.
    fn source(&self, p: usize, q: usize, a: usize, b: usize) -> Option<(usize, usize)> {
        let y = (p * self.strides[0] + a * self.dil[0]) as isize - self.pads[0] as isize;
        let x = (q * self.strides[1] + b * self.dil[1]) as isize - self.pads[1] as isize;
        (y >= 0 && x >= 0 && (y as usize) < self.h && (x as usize) < self.w)
            .then_some((y as usize, x as usize))
    }
}

/// Direct convolution: the nested loops of the definition.
pub fn naive_conv(case: &ConvCase, x: &Array4<f32>, w: &Array4<f32>) -> Array4<f32> {
    let n = x.shape()[0];
    let [oh, ow] = case.out_hw();
    let (cg, og) = (case.c / case.groups, case.o / case.groups);
    let mut y = Array4::zeros((n, case.o, oh, ow));
    for ni in 0..n {
        for o in 0..case.o {
            let g = o / og;
            for p in 0..oh {
                for q in 0..ow {
                    let mut acc = 0f64;
                    for ci in 0..cg {
                        for a in 0..case.kernel[0] {
                            for b in 0..case.kernel[1] {
                                if let Some((yy, xx)) = case.source(p, q, a, b) {
                                    acc += f64::from(w[[o, ci, a, b]])
                                        * f64::from(x[[ni, g * cg + ci, yy, xx]]);
                                }
                            }
                        }
                    }
                    y[[ni, o, p, q]] = acc as f32;
                }
            }
        }
    }
    y
}

/// The convolution as an explicit matrix `A[j, i] = w_ij` (rows: output units `(o, p, q)`,
/// columns: input positions `(c, y, x)`).
pub fn conv_matrix(case: &ConvCase, w: &Array4<f32>) -> Array2<f64> {
    let [oh, ow] = case.out_hw();
    let (cg, og) = (case.c / case.groups, case.o / case.groups);
    let mut a_mat = Array2::zeros((case.o * oh * ow, case.c * case.h * case.w));
    for o in 0..case.o {
        let g = o / og;
        for p in 0..oh {
            for q in 0..ow {
                let j = (o * oh + p) * ow + q;
                for ci in 0..cg {
                    for a in 0..case.kernel[0] {
                        for b in 0..case.kernel[1] {
                            if let Some((yy, xx)) = case.source(p, q, a, b) {
                                let i = ((g * cg + ci) * case.h + yy) * case.w + xx;
                                a_mat[[j, i]] += f64::from(w[[o, ci, a, b]]);
                            }
                        }
                    }
                }
            }
        }
    }
    a_mat
}

/// The transpose by its definition: `r_i = Σ_j w_ij s_j` with the explicit matrix.
pub fn naive_conv_transpose(case: &ConvCase, s: &Array4<f32>, w: &Array4<f32>) -> Array4<f32> {
    let a_mat = conv_matrix(case, w);
    let m = s.shape()[0];
    let mut r = Array4::zeros((m, case.c, case.h, case.w));
    let (rows, cols) = a_mat.dim();
    for mi in 0..m {
        let sf: Vec<f64> = s
            .index_axis(ndarray::Axis(0), mi)
            .iter()
            .map(|v| f64::from(*v))
            .collect();
        assert_eq!(sf.len(), rows);
        let mut rf = vec![0f64; cols];
        for (j, sj) in sf.iter().enumerate() {
            for (i, ri) in rf.iter_mut().enumerate() {
                *ri += a_mat[[j, i]] * sj;
            }
        }
        for (dst, v) in r.index_axis_mut(ndarray::Axis(0), mi).iter_mut().zip(rf) {
            *dst = v as f32;
        }
    }
    r
}

// ------------------------------------------------------------------------------------------
// Pooling
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
pub struct PoolCase {
    pub name: &'static str,
    pub max: bool,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    pub pads: [usize; 4],
    pub dil: [usize; 2],
    pub ceil: bool,
    pub cip: bool,
}

impl PoolCase {
    pub fn op(&self) -> Op {
        if self.max {
            Op::MaxPool {
                kernel: self.kernel,
                strides: self.strides,
                pads: self.pads,
                dilations: self.dil,
                ceil_mode: self.ceil,
            }
        } else {
            assert_eq!(self.dil, [1, 1]);
            Op::AvgPool {
                kernel: self.kernel,
                strides: self.strides,
                pads: self.pads,
                count_include_pad: self.cip,
                ceil_mode: self.ceil,
            }
        }
    }

    fn axis_out(&self, a: usize) -> usize {
        let len = [self.h, self.w][a];
        let total = len + self.pads[a] + self.pads[a + 2];
        let span = self.dil[a] * (self.kernel[a] - 1) + 1;
        let s = self.strides[a];
        let mut out = if self.ceil {
            (total - span).div_ceil(s)
        } else {
            (total - span) / s
        } + 1;
        // PyTorch/ONNX: the last window must start inside the input or the begin padding.
        if self.ceil && (out - 1) * s >= len + self.pads[a] {
            out -= 1;
        }
        out
    }

    pub fn out_hw(&self) -> [usize; 2] {
        [self.axis_out(0), self.axis_out(1)]
    }

    /// Window (p, q): its real positions (row-major over the kernel) and its divisor n_j.
    pub fn window(&self, p: usize, q: usize) -> (Vec<(usize, usize)>, usize) {
        let mut real = Vec::new();
        let mut padded = 0;
        for a in 0..self.kernel[0] {
            for b in 0..self.kernel[1] {
                // Padded coordinates.
                let py = p * self.strides[0] + a * self.dil[0];
                let px = q * self.strides[1] + b * self.dil[1];
                let inside_pad = py < self.h + self.pads[0] + self.pads[2]
                    && px < self.w + self.pads[1] + self.pads[3];
                if inside_pad {
                    padded += 1;
                }
                if py >= self.pads[0]
                    && px >= self.pads[1]
                    && py - self.pads[0] < self.h
                    && px - self.pads[1] < self.w
                {
                    real.push((py - self.pads[0], px - self.pads[1]));
                }
            }
        }
        let n = if self.cip { padded } else { real.len() };
        (real, n)
    }
}

pub enum PoolRule {
    WinnerTakeAll,
    MaxProportional(Stabilizer),
    AvgProportional(Stabilizer),
    AvgGradient,
}

/// The pool rules by their definitions. `r` has `x.rows · k` rows (fewer-dimensional `x` unused
/// by `AvgGradient`).
pub fn naive_pool(
    case: &PoolCase,
    rule: &PoolRule,
    x: &Array4<f32>,
    r: &Array4<f32>,
    k: usize,
) -> Array4<f32> {
    let [oh, ow] = case.out_hw();
    let m = r.shape()[0];
    let mut out = Array4::<f32>::zeros((m, case.c, case.h, case.w));
    for mi in 0..m {
        let ni = mi / k;
        for c in 0..case.c {
            for p in 0..oh {
                for q in 0..ow {
                    let (real, n_j) = case.window(p, q);
                    let rj = r[[mi, c, p, q]];
                    if real.is_empty() {
                        continue;
                    }
                    match rule {
                        PoolRule::WinnerTakeAll => {
                            let mut best = real[0];
                            for &(y, xx) in &real[1..] {
                                if x[[ni, c, y, xx]] > x[[ni, c, best.0, best.1]] {
                                    best = (y, xx);
                                }
                            }
                            out[[mi, c, best.0, best.1]] += rj;
                        }
                        PoolRule::MaxProportional(stab) => {
                            let sum: f64 = real
                                .iter()
                                .map(|&(y, xx)| f64::from(x[[ni, c, y, xx]]))
                                .sum();
                            let d = stab.apply(sum as f32);
                            for &(y, xx) in &real {
                                out[[mi, c, y, xx]] += x[[ni, c, y, xx]] * rj / d;
                            }
                        }
                        PoolRule::AvgProportional(stab) => {
                            let sum: f64 = real
                                .iter()
                                .map(|&(y, xx)| f64::from(x[[ni, c, y, xx]]))
                                .sum();
                            let z = sum as f32 / n_j as f32;
                            let d = stab.apply(z);
                            for &(y, xx) in &real {
                                out[[mi, c, y, xx]] += x[[ni, c, y, xx]] / n_j as f32 * rj / d;
                            }
                        }
                        PoolRule::AvgGradient => {
                            for &(y, xx) in &real {
                                out[[mi, c, y, xx]] += rj / n_j as f32;
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// A dynamic-rank array from a shape and values.
pub fn arr_d(shape: &[usize], values: Vec<f32>) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(shape), values).unwrap()
}
