//! 3×3 convolutions with stride 1 by Winograd's minimal filtering F(2×2, 3×3) (Lavin & Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2016): every 2×2 block of outputs of
//! every channel pair costs 16 multiplications instead of 36, so the products, which dominate,
//! shrink 2.25×. The transforms' coefficients are 0, ±1 and ±½ (exact in binary), so the
//! rounding error is that of a direct convolution's sums of a few more terms.
//!
//! One routine, [`conv`], computes `y[n, o, p, q] = Σ_{c, a, b} f[o, c, a, b] · x[n, c, p + a −
//! top, q + b − left]` (zero outside the image) for a [`Filter`] `f`. A layer's map and its
//! transpose are both of that form: the transpose's filter is the weight with its channel axes
//! swapped and its taps reversed, and its padding `2 − top`, `2 − left`.
//!
//! The work is cut into blocks of output tiles small enough that a block's transformed inputs
//! and products stay in the core's caches; blocks run in parallel on the current rayon pool.

use rayon::prelude::*;

/// Rows (output channels) of the product's register block.
const MR: usize = 8;
/// Columns (output tiles) of the product's register block.
const NR: usize = 32;
/// Positions of a 4×4 transformed tile.
const P: usize = 16;
/// Bytes of a block's transformed inputs and products together (per worker).
const BLOCK_BYTES: usize = 1 << 20;
/// Most tiles in a block.
const MAX_BLOCK_TILES: usize = 8 * NR;

/// A bank of 3×3 filters in Winograd form (`G g Gᵀ` per output–input channel pair), laid out
/// for the product: `[row block][position][input channel][row within block]`, the output
/// channels padded with zero filters to a multiple of the row block.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    u: Vec<f32>,
    rows: usize,
    cols: usize,
}

impl Filter {
    /// The filters of a layer's map (`transpose == false`: `f[o, c] = w[o, c]`) or of its
    /// transpose (`f[c, o, a, b] = w[o, c, 2 − a, 2 − b]`), for a standard-layout weight
    /// `w` of shape `[o, c, 3, 3]`.
    pub(crate) fn new(w: &[f32], o: usize, c: usize, transpose: bool) -> Self {
        assert_eq!(w.len(), o * c * 9, "winograd filter: weight size");
        let (rows, cols) = if transpose { (c, o) } else { (o, c) };
        let blocks = rows.div_ceil(MR);
        let mut u = vec![0f32; blocks * P * cols * MR];
        u.par_chunks_mut(P * cols * MR)
            .enumerate()
            .for_each(|(rb, block)| {
                let r0 = rb * MR;
                let live = (rows - r0).min(MR);
                for k in 0..cols {
                    // the taps of the block's filters for input channel k, lane r
                    let mut g = [[[0f32; MR]; 3]; 3];
                    for r in 0..live {
                        let taps = if transpose {
                            &w[(k * c + r0 + r) * 9..][..9]
                        } else {
                            &w[((r0 + r) * c + k) * 9..][..9]
                        };
                        for (t, &v) in taps.iter().enumerate() {
                            let (a, b) = if transpose {
                                (2 - t / 3, 2 - t % 3)
                            } else {
                                (t / 3, t % 3)
                            };
                            g[a][b][r] = v;
                        }
                    }
                    for (p, lanes) in winograd_filter(&g).iter().enumerate() {
                        block[(p * cols + k) * MR..][..MR].copy_from_slice(lanes);
                    }
                }
            });
        Filter { u, rows, cols }
    }

    fn row_blocks(&self) -> usize {
        self.rows.div_ceil(MR)
    }

    /// The packed `[cols][MR]` panel of row block `rb` at position `p`.
    fn panel(&self, rb: usize, p: usize) -> &[f32] {
        let len = self.cols * MR;
        &self.u[(rb * P + p) * len..][..len]
    }
}

/// `G g Gᵀ` of [`MR`] filters at once (lane `r` of `g[a][b]` is tap `(a, b)` of filter `r`),
/// position `4i + j` at index `4i + j`, with `G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]]`.
#[inline(always)]
fn winograd_filter(g: &[[[f32; MR]; 3]; 3]) -> [[f32; MR]; P] {
    let axis = |v0: [f32; MR], v1: [f32; MR], v2: [f32; MR]| -> [[f32; MR]; 4] {
        let mut out = [v0, [0.0; MR], [0.0; MR], v2];
        for r in 0..MR {
            out[1][r] = 0.5 * (v0[r] + v1[r] + v2[r]);
            out[2][r] = 0.5 * (v0[r] - v1[r] + v2[r]);
        }
        out
    };
    // the rows combined, per tap column b
    let cols: [[[f32; MR]; 4]; 3] = std::array::from_fn(|b| axis(g[0][b], g[1][b], g[2][b]));
    let mut u = [[0f32; MR]; P];
    for i in 0..4 {
        let row = axis(cols[0][i], cols[1][i], cols[2][i]);
        u[4 * i..4 * i + 4].copy_from_slice(&row);
    }
    u
}

/// Where a convolution reads and writes: `x` is `[n, cols, h, w]`, the output `[n, rows, oh,
/// ow]`, output `(p, q)` reading input rows `p − top ..= p − top + 2`, columns likewise.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub top: usize,
    pub left: usize,
    pub oh: usize,
    pub ow: usize,
}

/// A run of consecutive tiles of one tile row: image `n`, tile row `ty`, tiles `tx .. tx + len`,
/// the first being the block's tile `at`.
#[derive(Debug, Clone, Copy)]
struct Run {
    n: usize,
    ty: usize,
    tx: usize,
    len: usize,
    at: usize,
}

/// The convolution of `x` with `f` (see the module docs) into `out`, every element of which is
/// written.
pub(crate) fn conv(x: &[f32], f: &Filter, s: Shape, out: &mut [std::mem::MaybeUninit<f32>]) {
    let (rows, cols) = (f.rows, f.cols);
    assert!(s.top <= 2 && s.left <= 2, "winograd: padding above 2");
    assert_eq!(x.len(), s.n * cols * s.h * s.w, "winograd: input size");
    assert_eq!(out.len(), s.n * rows * s.oh * s.ow, "winograd: output size");
    let (th, tw) = (s.oh.div_ceil(2), s.ow.div_ceil(2));
    let total = s.n * th * tw;
    if total == 0 {
        return;
    }
    let padded_rows = f.row_blocks() * MR;
    let per_tile = P * (cols + padded_rows) * std::mem::size_of::<f32>();
    let tb = (BLOCK_BYTES / per_tile / NR * NR).clamp(NR, MAX_BLOCK_TILES);
    let kernel = Kernel::detect();
    let dst = SendPtr(out.as_mut_ptr() as *mut f32);
    (0..total.div_ceil(tb)).into_par_iter().for_each_init(
        || {
            (
                vec![0f32; P * cols * (tb + SLACK)],
                vec![0f32; P * padded_rows * tb + SLACK],
            )
        },
        |(v, m), b| {
            let start = b * tb;
            let runs = runs(start, (start + tb).min(total), th, tw);
            let block = Block {
                x,
                f,
                s,
                runs: &runs,
                v,
                m,
                tb,
                dst,
            };
            // SAFETY: the block's tiles cover output pixels no other block writes; `dst` spans
            // `out`, whose size was checked above.
            unsafe { kernel.run(block) };
        },
    );
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only used to write disjoint pixels from different blocks.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

/// One block's work: its tiles' runs, its buffers (`v`: `[P][cols][tb + SLACK]`, `m`: `[P][rows
/// padded][tb]` and [`SLACK`]), and where its output goes.
struct Block<'a> {
    x: &'a [f32],
    f: &'a Filter,
    s: Shape,
    runs: &'a [Run],
    v: &'a mut [f32],
    m: &'a mut [f32],
    tb: usize,
    dst: SendPtr,
}

impl Block<'_> {
    /// Transforms the inputs, multiplies with `kernel` (see [`products_with`]) and writes the
    /// outputs.
    ///
    /// # Safety
    /// As [`transform_outputs`].
    #[inline(always)]
    unsafe fn run(self, kernel: impl Fn(usize, &[f32], &[f32], usize, &mut [f32], usize)) {
        let ldv = self.tb + SLACK;
        transform_inputs(self.x, self.f.cols, &self.s, self.runs, self.v, ldv);
        let nb = self.runs.iter().map(|r| r.len).sum::<usize>();
        products_with(self.f, self.v, ldv, self.m, self.tb, nb, kernel);
        // SAFETY: the caller's promise.
        unsafe { transform_outputs(self.m, self.f.rows, &self.s, self.runs, self.tb, self.dst) };
    }
}

/// The runs of tiles `start .. end` (raster order over image, tile row, tile column).
fn runs(start: usize, end: usize, th: usize, tw: usize) -> Vec<Run> {
    let mut out = Vec::new();
    let mut t = start;
    while t < end {
        let (n, r) = (t / (th * tw), t % (th * tw));
        let (ty, tx) = (r / tw, r % tw);
        let len = (tw - tx).min(end - t);
        out.push(Run {
            n,
            ty,
            tx,
            len,
            at: t - start,
        });
        t += len;
    }
    out
}

/// Most tiles of one run handled at a time by the transforms (their row buffers' size).
const RUN_CHUNK: usize = 64;
/// Tiles transformed together (one vector register of f32 on AVX-512).
const LANES: usize = 16;
/// Columns of slack after every row of a block's transformed inputs, so that the transform may
/// write whole groups of [`LANES`] tiles.
const SLACK: usize = LANES;

/// `V[p][c][tile] = (Bᵀ d B)[p]` of every tile's 4×4 input patch `d` (zero outside the image);
/// `v` holds `[P][cols][ld]` with `ld = tb + SLACK`. Columns past a run's end may be
/// overwritten with garbage; a later run (processed after it) writes its own.
#[inline(always)]
fn transform_inputs(x: &[f32], cols: usize, s: &Shape, runs: &[Run], v: &mut [f32], ld: usize) {
    let plane = s.h * s.w;
    let mut rows = [[0f32; 2 * RUN_CHUNK + 2]; 4];
    // the rows' even and odd columns
    let mut even = [[0f32; HALF_ROW]; 4];
    let mut odd = [[0f32; HALF_ROW]; 4];
    for run in runs {
        for c in 0..cols {
            let img = &x[(run.n * cols + c) * plane..][..plane];
            for start in (0..run.len).step_by(RUN_CHUNK) {
                let len = (run.len - start).min(RUN_CHUNK);
                let x0 = 2 * (run.tx + start) as isize - s.left as isize;
                let y0 = 2 * run.ty as isize - s.top as isize;
                let width = 2 * len + 2;
                for (i, buf) in rows.iter_mut().enumerate() {
                    let y = y0 + i as isize;
                    let buf = &mut buf[..width];
                    if y < 0 || y >= s.h as isize {
                        buf.fill(0.0);
                        continue;
                    }
                    let line = &img[y as usize * s.w..][..s.w];
                    let lo = (-x0).clamp(0, width as isize) as usize;
                    let hi = (s.w as isize - x0).clamp(lo as isize, width as isize) as usize;
                    buf[..lo].fill(0.0);
                    buf[lo..hi].copy_from_slice(
                        &line[(x0 + lo as isize) as usize..(x0 + hi as isize) as usize],
                    );
                    buf[hi..].fill(0.0);
                }
                for (i, row) in rows.iter().enumerate() {
                    for (k, pair) in row[..width].chunks_exact(2).enumerate() {
                        even[i][k] = pair[0];
                        odd[i][k] = pair[1];
                    }
                }
                for l0 in (0..len).step_by(LANES) {
                    let t = input_lanes(&even, &odd, l0);
                    let at = c * ld + run.at + start + l0;
                    for (p, lanes) in t.iter().enumerate() {
                        v[p * cols * ld + at..][..LANES].copy_from_slice(lanes);
                    }
                }
            }
        }
    }
}

/// Length of the buffers of a row's even or odd columns: a chunk's tiles and one more, and
/// room for a whole group of [`LANES`] tiles from any chunk's last.
const HALF_ROW: usize = RUN_CHUNK + LANES + 1;

/// The input transform of the [`LANES`] tiles from `l0`, whose rows' even and odd columns are
/// `even` and `odd` (tile `l` reading even and odd columns `l` and `l + 1`; past a chunk's
/// width the tiles are garbage).
#[inline(always)]
fn input_lanes(
    even: &[[f32; HALF_ROW]; 4],
    odd: &[[f32; HALF_ROW]; 4],
    l0: usize,
) -> [[f32; LANES]; P] {
    let mut e = [[[0f32; LANES]; 4]; 4];
    for i in 0..4 {
        let ev: &[f32; LANES + 1] = even[i][l0..][..LANES + 1].try_into().expect("inside");
        let od: &[f32; LANES + 1] = odd[i][l0..][..LANES + 1].try_into().expect("inside");
        for l in 0..LANES {
            let (d0, d1, d2, d3) = (ev[l], od[l], ev[l + 1], od[l + 1]);
            e[i][0][l] = d0 - d2;
            e[i][1][l] = d1 + d2;
            e[i][2][l] = d2 - d1;
            e[i][3][l] = d1 - d3;
        }
    }
    let mut t = [[0f32; LANES]; P];
    for j in 0..4 {
        for l in 0..LANES {
            t[j][l] = e[0][j][l] - e[2][j][l];
            t[4 + j][l] = e[1][j][l] + e[2][j][l];
            t[8 + j][l] = e[2][j][l] - e[1][j][l];
            t[12 + j][l] = e[1][j][l] - e[3][j][l];
        }
    }
    t
}

/// Writes `y = Aᵀ M A` of every tile's sixteen products `M[p][o][tile]` (`m` holds `[P][rows
/// padded][tb]` and [`LANES`] values of slack) to its 2×2 output pixels (those inside the
/// output).
///
/// # Safety
/// `dst` must point at an `[n, rows, oh, ow]` array that no one else reads or writes at the
/// runs' pixels during the call.
#[inline(always)]
unsafe fn transform_outputs(
    m: &[f32],
    rows: usize,
    s: &Shape,
    runs: &[Run],
    tb: usize,
    dst: SendPtr,
) {
    let padded_rows = (m.len() - SLACK) / (P * tb);
    let plane = s.oh * s.ow;
    for run in runs {
        for o in 0..rows {
            for l0 in (0..run.len).step_by(LANES) {
                let len = (run.len - l0).min(LANES);
                let at = run.at + l0;
                let ins: [&[f32; LANES]; P] = std::array::from_fn(|p| {
                    m[(p * padded_rows + o) * tb + at..][..LANES]
                        .try_into()
                        .expect("slack after the last row")
                });
                let lines = output_lanes(&ins);
                let x0 = 2 * (run.tx + l0);
                let width = (2 * len).min(s.ow - x0);
                for (i, line) in lines.iter().enumerate() {
                    let y = 2 * run.ty + i;
                    if y >= s.oh {
                        break;
                    }
                    // SAFETY: (n, o, y, x0 .. x0 + width) lies inside the output (y < oh,
                    // x0 + width <= ow), and belongs to this run's tiles (the caller's promise).
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            line.as_ptr(),
                            dst.0.add((run.n * rows + o) * plane + y * s.ow + x0),
                            width,
                        );
                    }
                }
            }
        }
    }
}

/// The output transform of [`LANES`] tiles: two output rows (tile `l` at columns `2l, 2l + 1`).
#[inline(always)]
fn output_lanes(ins: &[&[f32; LANES]; P]) -> [[f32; 2 * LANES]; 2] {
    let mut t = [[[0f32; LANES]; 4]; 2];
    for j in 0..4 {
        for l in 0..LANES {
            let (m0, m1, m2, m3) = (ins[j][l], ins[4 + j][l], ins[8 + j][l], ins[12 + j][l]);
            t[0][j][l] = m0 + m1 + m2;
            t[1][j][l] = m1 - m2 - m3;
        }
    }
    let mut lines = [[0f32; 2 * LANES]; 2];
    for (line, t) in lines.iter_mut().zip(&t) {
        let mut left = [0f32; LANES];
        let mut right = [0f32; LANES];
        for l in 0..LANES {
            left[l] = t[0][l] + t[1][l] + t[2][l];
            right[l] = t[1][l] - t[2][l] - t[3][l];
        }
        for ((pair, a), b) in line.chunks_exact_mut(2).zip(left).zip(right) {
            pair[0] = a;
            pair[1] = b;
        }
    }
    lines
}

/// Whether this processor runs the products with vector instructions (AVX2 and FMA, or
/// AVX-512); without them the direct convolutions are faster.
pub(crate) fn fast() -> bool {
    static FAST: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FAST.get_or_init(|| !matches!(Kernel::detect(), Kernel::Portable))
}

/// The product kernels this processor runs.
#[derive(Debug, Clone, Copy)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Kernel::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }

    /// Runs a block with this kernel.
    ///
    /// # Safety
    /// As [`transform_outputs`].
    unsafe fn run(self, b: Block<'_>) {
        match self {
            // SAFETY: the processor has the features (detected above); the caller's promise.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe { block_avx512(b) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { block_avx2(b) },
            // SAFETY: the caller's promise.
            Kernel::Portable => unsafe { block_portable(b) },
        }
    }
}

/// `M[p] = U[p] · V[p]` over the block's first `nb` tiles, one register block at a time by
/// `block(k, a, b, ldb, c, ldc)` (`a`: `[k][MR]`, `b`: `k` rows of `NR`, `ldb` apart; `c`:
/// `MR` rows of `NR`, `ldc` apart).
#[inline(always)]
fn products_with(
    f: &Filter,
    v: &[f32],
    ldv: usize,
    m: &mut [f32],
    tb: usize,
    nb: usize,
    block: impl Fn(usize, &[f32], &[f32], usize, &mut [f32], usize),
) {
    let cols = f.cols;
    let padded_rows = f.row_blocks() * MR;
    assert!(v.len() >= P * cols * ldv && m.len() >= P * padded_rows * tb && nb <= tb && tb <= ldv);
    assert!(tb.is_multiple_of(NR) && cols > 0);
    for rb in 0..f.row_blocks() {
        for p in 0..P {
            let a = f.panel(rb, p);
            let vp = &v[p * cols * ldv..][..cols * ldv];
            let mp = &mut m[(p * padded_rows + rb * MR) * tb..][..MR * tb];
            for cb in (0..nb).step_by(NR) {
                block(cols, a, &vp[cb..], ldv, &mut mp[cb..], tb);
            }
        }
    }
}

/// Checks a register block's slices (see [`products_with`]).
#[inline(always)]
fn check_block(k: usize, a: &[f32], b: &[f32], ldb: usize, c: &[f32], ldc: usize) {
    assert!(a.len() >= k * MR && b.len() >= (k - 1) * ldb + NR && c.len() >= (MR - 1) * ldc + NR);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block_avx512(block: Block<'_>) {
    use std::arch::x86_64::*;
    let kernel = |k: usize, a: &[f32], b: &[f32], ldb: usize, c: &mut [f32], ldc: usize| {
        check_block(k, a, b, ldb, c, ldc);
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for kk in 0..k {
            // SAFETY: in bounds (checked above); unaligned loads.
            let (b0, b1) = unsafe {
                (
                    _mm512_loadu_ps(b.as_ptr().add(kk * ldb)),
                    _mm512_loadu_ps(b.as_ptr().add(kk * ldb + 16)),
                )
            };
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: in bounds (checked above).
                let ar = _mm512_set1_ps(unsafe { *a.get_unchecked(kk * MR + r) });
                acc[0] = _mm512_fmadd_ps(ar, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(ar, b1, acc[1]);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            // SAFETY: in bounds (checked above); unaligned stores.
            unsafe {
                _mm512_storeu_ps(c.as_mut_ptr().add(r * ldc), acc[0]);
                _mm512_storeu_ps(c.as_mut_ptr().add(r * ldc + 16), acc[1]);
            }
        }
    };
    // SAFETY: the caller's promise.
    unsafe { block.run(kernel) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(block: Block<'_>) {
    use std::arch::x86_64::*;
    let kernel = |k: usize, a: &[f32], b: &[f32], ldb: usize, c: &mut [f32], ldc: usize| {
        check_block(k, a, b, ldb, c, ldc);
        // four rows by sixteen columns at a time: eight of the sixteen registers
        for r0 in (0..MR).step_by(4) {
            for c0 in (0..NR).step_by(16) {
                let mut acc = [[_mm256_setzero_ps(); 2]; 4];
                for kk in 0..k {
                    // SAFETY: in bounds (checked above); unaligned loads.
                    let (b0, b1) = unsafe {
                        (
                            _mm256_loadu_ps(b.as_ptr().add(kk * ldb + c0)),
                            _mm256_loadu_ps(b.as_ptr().add(kk * ldb + c0 + 8)),
                        )
                    };
                    for (r, acc) in acc.iter_mut().enumerate() {
                        // SAFETY: in bounds (checked above).
                        let ar = _mm256_set1_ps(unsafe { *a.get_unchecked(kk * MR + r0 + r) });
                        acc[0] = _mm256_fmadd_ps(ar, b0, acc[0]);
                        acc[1] = _mm256_fmadd_ps(ar, b1, acc[1]);
                    }
                }
                for (r, acc) in acc.iter().enumerate() {
                    // SAFETY: in bounds (checked above); unaligned stores.
                    unsafe {
                        _mm256_storeu_ps(c.as_mut_ptr().add((r0 + r) * ldc + c0), acc[0]);
                        _mm256_storeu_ps(c.as_mut_ptr().add((r0 + r) * ldc + c0 + 8), acc[1]);
                    }
                }
            }
        }
    };
    // SAFETY: the caller's promise.
    unsafe { block.run(kernel) }
}

unsafe fn block_portable(block: Block<'_>) {
    let kernel = |k: usize, a: &[f32], b: &[f32], ldb: usize, c: &mut [f32], ldc: usize| {
        check_block(k, a, b, ldb, c, ldc);
        let mut acc = [[0f32; NR]; MR];
        for kk in 0..k {
            let bk = &b[kk * ldb..][..NR];
            for (r, acc) in acc.iter_mut().enumerate() {
                let ar = a[kk * MR + r];
                for (x, &bv) in acc.iter_mut().zip(bk) {
                    *x += ar * bv;
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            c[r * ldc..][..NR].copy_from_slice(acc);
        }
    };
    // SAFETY: the caller's promise.
    unsafe { block.run(kernel) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct definition, in f64.
    fn direct(x: &[f32], w: &[f32], o: usize, c: usize, s: Shape, transpose: bool) -> Vec<f64> {
        let (rows, cols) = if transpose { (c, o) } else { (o, c) };
        let mut y = vec![0f64; s.n * rows * s.oh * s.ow];
        for n in 0..s.n {
            for r in 0..rows {
                for p in 0..s.oh {
                    for q in 0..s.ow {
                        let mut acc = 0f64;
                        for k in 0..cols {
                            for a in 0..3 {
                                for b in 0..3 {
                                    let (yy, xx) = (
                                        (p + a) as isize - s.top as isize,
                                        (q + b) as isize - s.left as isize,
                                    );
                                    if yy < 0 || xx < 0 || yy >= s.h as isize || xx >= s.w as isize
                                    {
                                        continue;
                                    }
                                    let wv = if transpose {
                                        w[((k * c + r) * 3 + 2 - a) * 3 + 2 - b]
                                    } else {
                                        w[((r * c + k) * 3 + a) * 3 + b]
                                    };
                                    let xv =
                                        x[((n * cols + k) * s.h + yy as usize) * s.w + xx as usize];
                                    acc += wv as f64 * xv as f64;
                                }
                            }
                        }
                        y[((n * rows + r) * s.oh + p) * s.ow + q] = acc;
                    }
                }
            }
        }
        y
    }

    fn values(len: usize, k: f32) -> Vec<f32> {
        (0..len).map(|i| (i as f32 * k).sin()).collect()
    }

    fn run(x: &[f32], f: &Filter, s: Shape) -> Vec<f32> {
        let mut out = vec![std::mem::MaybeUninit::new(f32::NAN); s.n * f.rows * s.oh * s.ow];
        conv(x, f, s, &mut out);
        out.into_iter()
            .map(|v| unsafe { v.assume_init() })
            .collect()
    }

    /// Every kernel, odd and even sizes, paddings 0 to 2, channel counts off the register
    /// block, the map and its transpose: within f32 rounding of the direct sum.
    #[test]
    fn matches_the_direct_convolution() {
        let kernels = [Kernel::detect(), Kernel::Portable];
        for (n, c, o, h, w, top, left, bottom, right) in [
            (2, 3, 5, 7, 9, 1, 1, 1, 1),
            (1, 17, 9, 6, 5, 0, 0, 0, 0),
            (3, 8, 16, 5, 8, 2, 2, 2, 2),
            (2, 40, 33, 9, 75, 1, 2, 0, 1),
        ] {
            for transpose in [false, true] {
                let (rows, cols) = if transpose { (c, o) } else { (o, c) };
                // the map's geometry; the transpose reads its output and writes its input
                let (oh, ow) = (h + top + bottom - 2, w + left + right - 2);
                let s = if transpose {
                    Shape {
                        n,
                        h: oh,
                        w: ow,
                        top: 2 - top,
                        left: 2 - left,
                        oh: h,
                        ow: w,
                    }
                } else {
                    Shape {
                        n,
                        h,
                        w,
                        top,
                        left,
                        oh,
                        ow,
                    }
                };
                let x = values(n * cols * s.h * s.w, 0.37);
                let wt = values(o * c * 9, 0.91);
                let want = direct(&x, &wt, o, c, s, transpose);
                let f = Filter::new(&wt, o, c, transpose);
                assert_eq!((f.rows, f.cols), (rows, cols));
                for k in kernels {
                    let mut out =
                        vec![std::mem::MaybeUninit::new(f32::NAN); n * rows * s.oh * s.ow];
                    let dst = SendPtr(out.as_mut_ptr() as *mut f32);
                    let (th, tw) = (s.oh.div_ceil(2), s.ow.div_ceil(2));
                    let total = n * th * tw;
                    let tb = NR;
                    let (mut v, mut m) = (
                        vec![0f32; P * cols * (tb + SLACK)],
                        vec![0f32; P * f.row_blocks() * MR * tb + SLACK],
                    );
                    for b in 0..total.div_ceil(tb) {
                        let runs = runs(b * tb, ((b + 1) * tb).min(total), th, tw);
                        let block = Block {
                            x: &x,
                            f: &f,
                            s,
                            runs: &runs,
                            v: &mut v,
                            m: &mut m,
                            tb,
                            dst,
                        };
                        unsafe { k.run(block) };
                    }
                    let got: Vec<f32> = out
                        .into_iter()
                        .map(|v| unsafe { v.assume_init() })
                        .collect();
                    let scale = cols as f64 * 9.0;
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (*g as f64 - w).abs() <= 4e-7 * scale,
                            "{k:?} transpose {transpose} n{n} c{c} o{o} {h}x{w}: element {i}: {g} vs {w}"
                        );
                    }
                }
                let got = run(&x, &f, s);
                for (g, w) in got.iter().zip(&want) {
                    assert!((*g as f64 - w).abs() <= 4e-7 * cols as f64 * 9.0);
                }
            }
        }
    }
}
