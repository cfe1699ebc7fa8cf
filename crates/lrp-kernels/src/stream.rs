//! Large Dense weights for a few rows, read once: the transpose `out = s · f(w)` for a signal
//! `s` of `M` rows (`[M, K]`) and a weight `w` (`[K, N]`, standard layout) mapped element by
//! element by `f`, [`ROWS`] weight rows at a time, each worker a panel of columns; and the
//! forward sums `z = x · f(w)ᵀ` ([`forward`]), a few weight rows at a time, the rows split
//! between the workers.
//!
//! A general matrix product packs the weight into its own layout before it multiplies, which
//! for a few rows costs as much as the product: the sums are bound by reading the weight (a
//! VGG16 classifier's first layer holds 411 MB of f32). Here every weight value is loaded once
//! into a register, mapped there, and multiplied into every row's sums for its column, the
//! sums of a panel's columns staying in the core's caches. Every transposed output is the sum
//! over `k` in order, whatever the number of workers.

use rayon::prelude::*;

/// Weight rows per pass over a panel's sums.
const ROWS: usize = 8;
/// Columns per panel (one worker's share at a time): the sums of a panel, `M` rows of it,
/// stay in the core's first- or second-level cache between passes.
const PANEL: usize = 1024;
/// Signal rows whose sums one register block holds (with [`WIDE`] vectors of columns each).
const GROUP: usize = 8;
/// Vectors of sixteen columns per register block (a panel's last columns go one vector at a
/// time).
const WIDE: usize = 3;
/// The most signal rows the streamed transpose takes: beyond, the sums of a panel outgrow the
/// caches and a general product is as fast.
pub(crate) const MAX_ROWS: usize = 32;

/// Whether this processor runs the streamed kernels (AVX-512).
pub(crate) fn fast() -> bool {
    crate::winograd::Kernel::best() == crate::winograd::Kernel::Avx512
}

/// Whether [`transpose`] runs here for `rows` signal rows: [`fast`], at most [`MAX_ROWS`].
pub(crate) fn available(rows: usize) -> bool {
    rows <= MAX_ROWS && fast()
}

/// `out = s · f(w)` for a signal `s` of `m` rows given by weight row, `st = sᵀ` (`[k, m]`);
/// `w` is `[k, n]`, `out` `[m, n]` (all standard layout; every value of `out` is written).
///
/// # Panics
/// Where [`available`] is false or the sizes disagree.
pub(crate) fn transpose(
    st: &[f32],
    m: usize,
    w: &[f32],
    n: usize,
    f: &(impl Fn(f32) -> f32 + Sync),
    out: &mut [std::mem::MaybeUninit<f32>],
) {
    assert!(available(m), "stream: {m} rows");
    let k = w.len().checked_div(n).unwrap_or(0);
    assert!(
        w.len() == k * n && st.len() == m * k && out.len() == m * n,
        "stream: signal {}, weight {}, output {} for [{m}, {k}] × [{k}, {n}]",
        st.len(),
        w.len(),
        out.len()
    );
    if k == 0 {
        out.iter_mut().for_each(|v| {
            v.write(0.0);
        });
        return;
    }
    let dst = SendPtr(out.as_mut_ptr().cast());
    (0..n.div_ceil(PANEL)).into_par_iter().for_each(|p| {
        let cols = p * PANEL..((p + 1) * PANEL).min(n);
        // SAFETY: the processor has AVX-512F (`available`); panels are disjoint columns of
        // `out`, whose size was checked above.
        unsafe { panel(st, m, w, n, f, dst, cols) };
    });
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only used to write disjoint columns from different panels.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

/// Columns `cols` of `out = s · f(w)` (`st` the signal by weight row, [`transpose`]), every
/// value written (the first weight rows' pass starts the sums from 0).
///
/// # Safety
/// AVX-512F; `out` (`[m, n]`) must be writable at columns `cols` and no one else's there.
#[target_feature(enable = "avx512f")]
unsafe fn panel(
    st: &[f32],
    m: usize,
    w: &[f32],
    n: usize,
    f: &impl Fn(f32) -> f32,
    out: SendPtr,
    cols: std::ops::Range<usize>,
) {
    let k = w.len() / n;
    for k0 in (0..k).step_by(ROWS) {
        let rows = k0..(k0 + ROWS).min(k);
        let mut c = cols.start;
        while c < cols.end {
            let width = if c + WIDE * 16 <= cols.end { WIDE } else { 1 };
            for g0 in (0..m).step_by(GROUP) {
                let g = (m - g0).min(GROUP);
                let at = Block {
                    st,
                    m,
                    w,
                    n,
                    rows: rows.clone(),
                    c,
                    live: (cols.end - c).min(16),
                    g0,
                    out,
                };
                // SAFETY (every arm): the caller's promise; the block's columns lie in `cols`.
                unsafe {
                    match (g, width) {
                        (8, WIDE) => block::<8, WIDE>(at, f),
                        (7, WIDE) => block::<7, WIDE>(at, f),
                        (6, WIDE) => block::<6, WIDE>(at, f),
                        (5, WIDE) => block::<5, WIDE>(at, f),
                        (4, WIDE) => block::<4, WIDE>(at, f),
                        (3, WIDE) => block::<3, WIDE>(at, f),
                        (2, WIDE) => block::<2, WIDE>(at, f),
                        (1, WIDE) => block::<1, WIDE>(at, f),
                        (8, _) => block::<8, 1>(at, f),
                        (7, _) => block::<7, 1>(at, f),
                        (6, _) => block::<6, 1>(at, f),
                        (5, _) => block::<5, 1>(at, f),
                        (4, _) => block::<4, 1>(at, f),
                        (3, _) => block::<3, 1>(at, f),
                        (2, _) => block::<2, 1>(at, f),
                        _ => block::<1, 1>(at, f),
                    }
                }
            }
            c += width * 16;
        }
    }
}

/// One register block: signal rows `g0 .. g0 + G`, columns `c .. c + 16·X` (with `X == 1`,
/// the `live` first of them), weight rows `rows` (from the first: the sums start from 0,
/// otherwise from what `out` holds).
struct Block<'a> {
    st: &'a [f32],
    m: usize,
    w: &'a [f32],
    n: usize,
    rows: std::ops::Range<usize>,
    c: usize,
    live: usize,
    g0: usize,
    out: SendPtr,
}

/// Adds weight rows `b.rows` of columns `b.c ..` times the signal to the sums of rows
/// `b.g0 .. b.g0 + G` (held in registers meanwhile).
///
/// # Safety
/// AVX-512F; as [`panel`], for the block's columns.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn block<const G: usize, const X: usize>(b: Block<'_>, f: &impl Fn(f32) -> f32) {
    use std::arch::x86_64::*;
    let mask: __mmask16 = if X == 1 && b.live < 16 {
        (1u16 << b.live) - 1
    } else {
        !0
    };
    assert!(b.c + if X == 1 { b.live } else { 16 * X } <= b.n);
    assert!(b.rows.end * b.n <= b.w.len() && b.g0 + G <= b.m);
    let mut acc = [[_mm512_setzero_ps(); X]; G];
    if b.rows.start > 0 {
        for (r, acc) in acc.iter_mut().enumerate() {
            for (x, a) in acc.iter_mut().enumerate() {
                // SAFETY: inside row g0 + r of `out`, written by the earlier rows' passes (the
                // caller's promise; masked past `live`).
                *a = unsafe {
                    _mm512_maskz_loadu_ps(mask, b.out.0.add((b.g0 + r) * b.n + b.c + 16 * x))
                };
            }
        }
    }
    for kk in b.rows.clone() {
        let wv: [__m512; X] = std::array::from_fn(|x| {
            // SAFETY: inside weight row kk (asserted above; masked past `live`).
            unsafe { mapped_load(mask, b.w.as_ptr().add(kk * b.n + b.c + 16 * x), f) }
        });
        let sp = &b.st[kk * b.m + b.g0..][..G];
        for (acc, &sv) in acc.iter_mut().zip(sp) {
            let sv = _mm512_set1_ps(sv);
            for (a, &wv) in acc.iter_mut().zip(&wv) {
                *a = _mm512_fmadd_ps(sv, wv, *a);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (x, &a) in acc.iter().enumerate() {
            // SAFETY: as the loads above.
            unsafe { _mm512_mask_storeu_ps(b.out.0.add((b.g0 + r) * b.n + b.c + 16 * x), mask, a) };
        }
    }
}

/// Weight rows one register block of [`forward`] sums over at once.
const FORWARD_ROWS: usize = 3;
/// Images one register block of [`forward`] sums for at once.
const FORWARD_IMAGES: usize = 8;

/// `z = x · f(w)ᵀ`: `x` is `[n, k]`, `w` `[j, k]`, `z` `[n, j]` (all standard layout), reading
/// the weight once, [`FORWARD_ROWS`] rows at a time, the rows split between the workers. Each
/// sum is formed in sixteen interleaved partial sums, added up in a fixed order: the same
/// values whatever the number of workers.
///
/// # Panics
/// Where [`available`] is false (for any row count) or the sizes disagree.
pub(crate) fn forward(
    x: &[f32],
    n: usize,
    w: &[f32],
    k: usize,
    f: &(impl Fn(f32) -> f32 + Sync),
    z: &mut [f32],
) {
    assert!(fast(), "stream: no AVX-512");
    let j = w.len().checked_div(k).unwrap_or(0);
    assert!(
        w.len() == j * k && x.len() == n * k && z.len() == n * j,
        "stream: input {}, weight {}, output {} for [{n}, {k}] × [{j}, {k}]ᵀ",
        x.len(),
        w.len(),
        z.len()
    );
    if n == 0 || j == 0 {
        return;
    }
    // zᵀ, a block of weight rows per work item
    let mut zt = vec![0f32; j * n];
    zt.par_chunks_mut(FORWARD_ROWS * n)
        .enumerate()
        .for_each(|(b, zt)| {
            let r0 = b * FORWARD_ROWS;
            let rows = zt.len() / n;
            for i0 in (0..n).step_by(FORWARD_IMAGES) {
                let images = (n - i0).min(FORWARD_IMAGES);
                // SAFETY (every arm): the processor has AVX-512F (asserted above); the rows
                // and images lie in `w` and `x` (sizes checked above).
                let sums = unsafe {
                    match (rows, images) {
                        (FORWARD_ROWS, 8) => dots::<FORWARD_ROWS, 8>(x, k, i0, w, r0, f),
                        (FORWARD_ROWS, 7) => dots::<FORWARD_ROWS, 7>(x, k, i0, w, r0, f),
                        (FORWARD_ROWS, 6) => dots::<FORWARD_ROWS, 6>(x, k, i0, w, r0, f),
                        (FORWARD_ROWS, 5) => dots::<FORWARD_ROWS, 5>(x, k, i0, w, r0, f),
                        (FORWARD_ROWS, 4) => dots::<FORWARD_ROWS, 4>(x, k, i0, w, r0, f),
                        (FORWARD_ROWS, 3) => dots::<FORWARD_ROWS, 3>(x, k, i0, w, r0, f),
                        (FORWARD_ROWS, 2) => dots::<FORWARD_ROWS, 2>(x, k, i0, w, r0, f),
                        (FORWARD_ROWS, _) => dots::<FORWARD_ROWS, 1>(x, k, i0, w, r0, f),
                        // the last block: its rows one at a time
                        (_, _) => {
                            let mut s = [[0f32; FORWARD_IMAGES]; FORWARD_ROWS];
                            for (r, row) in s.iter_mut().enumerate().take(rows) {
                                for (i, v) in row.iter_mut().enumerate().take(images) {
                                    *v = dots::<1, 1>(x, k, i0 + i, w, r0 + r, f)[0][0];
                                }
                            }
                            s
                        }
                    }
                };
                for (r, sums) in sums.iter().enumerate().take(rows) {
                    zt[r * n + i0..][..images].copy_from_slice(&sums[..images]);
                }
            }
        });
    for (r, row) in zt.chunks_exact(n).enumerate() {
        for (i, &v) in row.iter().enumerate() {
            z[i * j + r] = v;
        }
    }
}

/// The sums `Σ_c x[i0 + i, c] · f(w[r0 + r, c])` for `R` weight rows and `I` images (in the
/// returned array's first `R` rows and `I` columns).
///
/// # Safety
/// AVX-512F; rows `r0 .. r0 + R` of `w` and `i0 .. i0 + I` of `x` (`k` values each) must exist.
#[target_feature(enable = "avx512f")]
unsafe fn dots<const R: usize, const I: usize>(
    x: &[f32],
    k: usize,
    i0: usize,
    w: &[f32],
    r0: usize,
    f: &impl Fn(f32) -> f32,
) -> [[f32; FORWARD_IMAGES]; FORWARD_ROWS] {
    use std::arch::x86_64::*;
    assert!((r0 + R) * k <= w.len() && (i0 + I) * k <= x.len());
    let mut acc = [[_mm512_setzero_ps(); I]; R];
    let mut c = 0;
    while c < k {
        let live = (k - c).min(16);
        let mask: __mmask16 = if live == 16 { !0 } else { (1u16 << live) - 1 };
        // (past `live`, the inputs' lanes are 0: f(0) adds nothing)
        let wv: [__m512; R] = std::array::from_fn(|r| {
            // SAFETY: inside weight row r0 + r (asserted above; masked past `live`).
            unsafe { mapped_load(mask, w.as_ptr().add((r0 + r) * k + c), f) }
        });
        for i in 0..I {
            // SAFETY: inside image i0 + i (asserted above; masked past `live`).
            let xv = unsafe { _mm512_maskz_loadu_ps(mask, x.as_ptr().add((i0 + i) * k + c)) };
            for (acc, &wv) in acc.iter_mut().zip(&wv) {
                acc[i] = _mm512_fmadd_ps(xv, wv, acc[i]);
            }
        }
        c += 16;
    }
    let mut out = [[0f32; FORWARD_IMAGES]; FORWARD_ROWS];
    for (o, acc) in out.iter_mut().zip(&acc) {
        for (o, &a) in o.iter_mut().zip(acc) {
            *o = _mm512_reduce_add_ps(a);
        }
    }
    out
}

/// The sixteen values from `p` (those `mask` selects; 0 elsewhere), each mapped by `f`.
///
/// # Safety
/// AVX-512F; the selected values from `p` must be readable.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn mapped_load(
    mask: std::arch::x86_64::__mmask16,
    p: *const f32,
    f: &impl Fn(f32) -> f32,
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let mut lanes = [0f32; 16];
    // SAFETY: the caller's promise; sixteen values into an array of sixteen.
    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), _mm512_maskz_loadu_ps(mask, p)) };
    for v in &mut lanes {
        *v = f(*v);
    }
    // SAFETY: sixteen values from an array of sixteen.
    unsafe { _mm512_loadu_ps(lanes.as_ptr()) }
}
