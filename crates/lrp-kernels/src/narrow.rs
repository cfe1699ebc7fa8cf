//! The transposes of 3×3, stride-1 convolutions into a few channels (an RGB input layer): direct
//! sums along the rows, with the rules' division done as the relevance is read and their
//! product as the result is written, as the Winograd kernels do them.
//!
//! Such a transpose reads a wide relevance (64 channels at full resolution on VGG16) and writes
//! three channels: Winograd's transforms and ONNX Runtime's blocked kernels spend their time on
//! the wide side, where a direct sum needs one pass over it (docs/performance.md, eleventh
//! session). Each output row is summed over the output channels `o`, then the kernel rows and
//! columns, `out[c, y, x] = Σ_o Σ_kh Σ_kw s[o, y + top − kh, x + left − kw] · w[o, c, kh, kw]`
//! (terms outside the relevance are zero), with one multiply-add per term (fused where the
//! processor has FMA).

use rayon::prelude::*;

use crate::winograd::{Kernel, Scale, Source};

/// The most channels (rows of the transpose) this kernel takes.
pub(crate) const MAX_ROWS: usize = 8;

/// Output rows per work item.
const BAND: usize = 8;

/// Zeros before a relevance row in its padded copy (at least the largest padding, 2).
const LEAD: usize = 2;

/// The sizes of one transpose: `rows` channels of `h × w` written (the map's input), `cols`
/// channels of `oh × ow` read (the map's output), padding `top` and `left` (at most 2).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub n: usize,
    pub rows: usize,
    pub h: usize,
    pub w: usize,
    pub cols: usize,
    pub oh: usize,
    pub ow: usize,
    pub top: usize,
    pub left: usize,
}

/// The transpose of the 3×3 map with weight `wt` (`[cols, rows, 3, 3]`) over `src`
/// (`[n, cols, oh, ow]`) into `out` (`[n, rows, h, w]`, every element written); with `scale`,
/// each output times its factor.
pub(crate) fn transpose(
    src: Source<'_>,
    wt: &[f32],
    s: Shape,
    out: &mut [std::mem::MaybeUninit<f32>],
    scale: Option<Scale<'_>>,
) {
    transpose_by(Kernel::best(), src, wt, s, out, scale)
}

/// [`transpose`] by the body for `kernel` (which the processor must run).
fn transpose_by(
    kernel: Kernel,
    src: Source<'_>,
    wt: &[f32],
    s: Shape,
    out: &mut [std::mem::MaybeUninit<f32>],
    scale: Option<Scale<'_>>,
) {
    assert!(s.rows <= MAX_ROWS && s.top <= LEAD && s.left <= LEAD);
    assert!(
        s.oh <= s.h + 2 && s.ow <= s.w + 2,
        "narrow: padding above 2"
    );
    assert_eq!(wt.len(), s.cols * s.rows * 9, "narrow: weight size");
    let plane_in = s.oh * s.ow;
    match src {
        Source::Plain(x) => assert_eq!(x.len(), s.n * s.cols * plane_in, "narrow: input size"),
        Source::Ratio {
            r, z, maps, bias, ..
        } => {
            assert!(maps > 0 && s.n.is_multiple_of(maps), "narrow: maps");
            assert_eq!(r.len(), s.n * s.cols * plane_in, "narrow: relevance size");
            assert_eq!(z.len() * maps, r.len(), "narrow: denominators' size");
            assert!(bias.is_none_or(|b| b.len() == s.cols), "narrow: bias size");
        }
    }
    let plane = s.h * s.w;
    assert_eq!(out.len(), s.n * s.rows * plane, "narrow: output size");
    if let Some(sc) = scale {
        assert!(
            sc.maps > 0 && sc.x.len() * sc.maps == out.len(),
            "narrow: factors' size"
        );
    }
    let bands = s.h.div_ceil(BAND);
    let taps = reorder_taps(wt, s.cols, s.rows);
    let job = Job {
        src,
        taps: &taps,
        s,
        dst: SendPtr(out.as_mut_ptr() as *mut f32),
        scale,
    };
    let len = s.cols * (BAND + 2) * row_len(&s);
    (0..s.n * bands).into_par_iter().for_each(|item| {
        let (m, band) = (item / bands, item % bands);
        let ys = band * BAND..((band + 1) * BAND).min(s.h);
        // SAFETY: rows `ys` of image `m` are this item's alone; `dst` spans `out`, whose size
        // was checked above.
        let work = |rows: &mut [f32]| unsafe { run(kernel, job, m, ys, rows) };
        // This thread's buffer, kept from call to call: `prepare` writes every value the sums
        // read.
        ROWS.with(|cell| match cell.try_borrow_mut() {
            Ok(mut rows) => {
                if rows.len() < len {
                    *rows = vec![0f32; len];
                }
                work(&mut rows[..len])
            }
            Err(_) => work(&mut vec![0f32; len]),
        });
    });
}

thread_local! {
    /// The padded relevance rows of a work item ([`prepare`]) on this thread.
    static ROWS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The taps of `wt` (`[cols, rows, 3, 3]`) in the order the sums read them: output channel
/// fastest, then the kernel column, the kernel row and the relevance channel
/// (`t[((o·3 + kh)·3 + kw)·rows + c] = wt[o, c, kh, kw]`).
fn reorder_taps(wt: &[f32], cols: usize, rows: usize) -> Vec<f32> {
    let mut t = vec![0f32; wt.len()];
    for o in 0..cols {
        for c in 0..rows {
            for k in 0..9 {
                t[(o * 9 + k) * rows + c] = wt[(o * rows + c) * 9 + k];
            }
        }
    }
    t
}

/// Columns summed per step (one AVX-512 register of f32).
const LANES: usize = 16;

/// An output row's width rounded up to whole steps of [`LANES`] columns.
fn padded_width(w: usize) -> usize {
    w.div_ceil(LANES) * LANES
}

/// The length of a padded relevance row: [`LEAD`] zeros, the row, and zeros up to the last
/// column any step reads (`LEAD + left + padded_width(w)`, `left` at most 2).
fn row_len(s: &Shape) -> usize {
    (LEAD + s.ow).max(LEAD + 2 + padded_width(s.w))
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only used to write disjoint rows from different work items.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

/// What every work item of one transpose reads and where it writes.
#[derive(Clone, Copy)]
struct Job<'a> {
    src: Source<'a>,
    /// The weights as [`reorder_taps`] orders them.
    taps: &'a [f32],
    s: Shape,
    dst: SendPtr,
    scale: Option<Scale<'a>>,
}

/// Output rows `ys` of image `m`, by the body for `kernel` (the Winograd kernels' choice of
/// instructions), with `rows` as the buffer of the padded relevance rows.
///
/// # Safety
/// The processor must run `kernel`'s instructions; `job.dst` must point at the
/// `[n, rows, h, w]` output, whose rows `ys` of image `m` no one else reads or writes during
/// the call.
unsafe fn run(
    kernel: Kernel,
    job: Job<'_>,
    m: usize,
    ys: std::ops::Range<usize>,
    rows: &mut [f32],
) {
    // (each body prepares the rows itself, compiled for its instructions: the divisions
    // vectorise)
    match kernel {
        // SAFETY: the processor has AVX-512F and FMA (the caller's promise), as below.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { sums_avx512(job, m, ys, rows) },
        // SAFETY: the processor has AVX2 and FMA (the caller's promise).
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { sums_avx2(job, m, ys, rows) },
        // SAFETY: the caller's promise.
        Kernel::Portable => unsafe { sums::<false, false>(job, m, ys, rows) },
    }
}

/// The relevance rows `oy0 .. oy1` (see [`relevance_rows`]) that output rows `ys` of image
/// `m` read, of every channel, divided as they are read, [`LEAD`] zeros before each and zeros
/// after: row `oy` of channel `o` at `rows[(o·(BAND + 2) + oy − oy0)·row_len ..]`.
#[inline(always)]
fn prepare(job: &Job<'_>, m: usize, ys: &std::ops::Range<usize>, rows: &mut [f32]) {
    let s = job.s;
    let (ow, plane_in, len) = (s.ow, s.oh * s.ow, row_len(&s));
    let (oy0, oy1) = relevance_rows(&s, ys);
    for o in 0..s.cols {
        for oy in oy0..oy1 {
            let padded = &mut rows[(o * (BAND + 2) + oy - oy0) * len..][..len];
            let at = (m * s.cols + o) * plane_in + oy * ow;
            padded[..LEAD].fill(0.0);
            padded[LEAD + ow..].fill(0.0);
            let dst_row = &mut padded[LEAD..LEAD + ow];
            match job.src {
                Source::Plain(x) => dst_row.copy_from_slice(&x[at..at + ow]),
                Source::Ratio {
                    r,
                    z,
                    maps,
                    stab,
                    bias,
                    wide,
                } => {
                    let zat = ((m / maps) * s.cols + o) * plane_in + oy * ow;
                    let (rr, zz) = (&r[at..at + ow], &z[zat..zat + ow]);
                    if wide {
                        let b = bias.map_or(0.0, |b| b[o]);
                        for ((d, &rv), &zv) in dst_row.iter_mut().zip(rr).zip(zz) {
                            *d = stab.divide_f64(rv, f64::from(zv) + b);
                        }
                    } else {
                        for ((d, &rv), &zv) in dst_row.iter_mut().zip(rr).zip(zz) {
                            *d = rv / stab.apply(zv);
                        }
                    }
                }
            }
        }
    }
}

/// The relevance rows `oy0 .. oy1` that output rows `ys` read (`oy = y + top − kh`, `kh < 3`).
fn relevance_rows(s: &Shape, ys: &std::ops::Range<usize>) -> (usize, usize) {
    (
        (ys.start + s.top).saturating_sub(2),
        (ys.end - 1 + s.top + 1).min(s.oh),
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn sums_avx512(job: Job<'_>, m: usize, ys: std::ops::Range<usize>, rows: &mut [f32]) {
    // SAFETY: the caller's promise.
    unsafe { sums::<true, true>(job, m, ys, rows) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sums_avx2(job: Job<'_>, m: usize, ys: std::ops::Range<usize>, rows: &mut [f32]) {
    // SAFETY: the caller's promise.
    unsafe { sums::<true, false>(job, m, ys, rows) }
}

/// Output rows `ys` of image `m` from the prepared relevance `rows` ([`prepare`]): by register
/// blocks of every output channel and several steps of [`LANES`] columns with AVX-512 (`WIDE`),
/// one step at a time otherwise; multiply-adds fused where `FMA`.
///
/// # Safety
/// As [`run`]; with `WIDE`, the processor must have AVX-512F.
#[inline(always)]
unsafe fn sums<const FMA: bool, const WIDE: bool>(
    job: Job<'_>,
    m: usize,
    ys: std::ops::Range<usize>,
    rows: &mut [f32],
) {
    prepare(&job, m, &ys, rows);
    let rows = &*rows;
    #[cfg(target_arch = "x86_64")]
    if WIDE {
        // SAFETY (every arm): the caller's promise.
        unsafe {
            match job.s.rows {
                1 => block_rows::<1, 8>(job, m, ys, rows),
                2 => block_rows::<2, 8>(job, m, ys, rows),
                3 => block_rows::<3, 8>(job, m, ys, rows),
                4 => block_rows::<4, 6>(job, m, ys, rows),
                5 => block_rows::<5, 4>(job, m, ys, rows),
                6 => block_rows::<6, 4>(job, m, ys, rows),
                7 => block_rows::<7, 3>(job, m, ys, rows),
                8 => block_rows::<8, 3>(job, m, ys, rows),
                r => unreachable!("narrow: {r} rows (at most {MAX_ROWS})"),
            }
        }
        return;
    }
    for y in ys.clone() {
        for x in (0..padded_width(job.s.w)).step_by(LANES) {
            let r = job.s.rows;
            let mut acc = [[0f32; LANES]; MAX_ROWS];
            let acc = &mut acc[..r];
            sum_terms(&job, &ys, y, rows, |o, kh, padded| {
                let taps = &job.taps[(o * 3 + kh) * 3 * r..][..3 * r];
                for kw in 0..3 {
                    let seg: &[f32; LANES] = padded[LEAD + job.s.left - kw + x..][..LANES]
                        .try_into()
                        .expect("inside the padded row");
                    for (c, a) in acc.iter_mut().enumerate() {
                        let kv = taps[kw * r + c];
                        for (v, &sv) in a.iter_mut().zip(seg) {
                            *v = if FMA {
                                kv.mul_add(sv, *v)
                            } else {
                                *v + kv * sv
                            };
                        }
                    }
                }
            });
            for (c, a) in acc.iter().enumerate() {
                // SAFETY: the caller's promise.
                unsafe { write(&job, m, c, y, x, |k| a[k]) };
            }
        }
    }
}

/// Calls `f(o, kh, padded)` for every relevance channel `o` and kernel row `kh` whose relevance
/// row (`y + top − kh`) output row `y` reads, `padded` that row as [`prepare`] left it in
/// `rows`: the order of every output's sum.
#[inline(always)]
fn sum_terms(
    job: &Job<'_>,
    ys: &std::ops::Range<usize>,
    y: usize,
    rows: &[f32],
    mut f: impl FnMut(usize, usize, &[f32]),
) {
    let s = job.s;
    let len = row_len(&s);
    let (oy0, _) = relevance_rows(&s, ys);
    for o in 0..s.cols {
        for kh in 0..3 {
            let Some(oy) = (y + s.top).checked_sub(kh).filter(|&oy| oy < s.oh) else {
                continue;
            };
            f(o, kh, &rows[(o * (BAND + 2) + oy - oy0) * len..][..len]);
        }
    }
}

/// Writes the sums of output channel `c`, row `y`, columns `x .. x + LANES` of image `m` (those
/// inside the row; `value(k)` is column `x + k`'s), times their factors with `scale`.
///
/// # Safety
/// As [`run`].
#[inline(always)]
unsafe fn write(
    job: &Job<'_>,
    m: usize,
    c: usize,
    y: usize,
    x: usize,
    value: impl Fn(usize) -> f32,
) {
    let s = job.s;
    if x >= s.w {
        return;
    }
    let live = (s.w - x).min(LANES);
    let plane = s.h * s.w;
    let at = (m * s.rows + c) * plane + y * s.w + x;
    // SAFETY: these `live` values of row y of channel c of image m lie inside the output and
    // are this call's alone (the caller's promise).
    let out = unsafe { std::slice::from_raw_parts_mut(job.dst.0.add(at), live) };
    match job.scale {
        None => out.iter_mut().enumerate().for_each(|(k, o)| *o = value(k)),
        Some(sc) => {
            let xat = ((m / sc.maps) * s.rows + c) * plane + y * s.w + x;
            for (k, (o, &f)) in out.iter_mut().zip(&sc.x[xat..xat + live]).enumerate() {
                *o = value(k) * f;
            }
        }
    }
}

/// [`sums`] with AVX-512 for `R` output channels, in blocks of `X` steps of [`LANES`] columns
/// (one step at a time at a row's end).
///
/// # Safety
/// As [`run`]; the processor must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn block_rows<const R: usize, const X: usize>(
    job: Job<'_>,
    m: usize,
    ys: std::ops::Range<usize>,
    rows: &[f32],
) {
    let wp = padded_width(job.s.w);
    for y in ys.clone() {
        let mut x = 0;
        while x + X * LANES <= wp {
            // SAFETY: the caller's promise.
            unsafe { block::<R, X>(&job, m, &ys, y, x, rows) };
            x += X * LANES;
        }
        while x < wp {
            // SAFETY: the caller's promise.
            unsafe { block::<R, 1>(&job, m, &ys, y, x, rows) };
            x += LANES;
        }
    }
}

/// Output row `y` of image `m`, columns `x .. x + X·LANES`, all `R` channels: the sums held in
/// registers over every term ([`sum_terms`]), then written.
///
/// # Safety
/// As [`run`]; the processor must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn block<const R: usize, const X: usize>(
    job: &Job<'_>,
    m: usize,
    ys: &std::ops::Range<usize>,
    y: usize,
    x: usize,
    rows: &[f32],
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); X]; R];
    let left = job.s.left;
    sum_terms(job, ys, y, rows, |o, kh, padded| {
        let taps = &job.taps[(o * 3 + kh) * 3 * R..][..3 * R];
        assert!(LEAD + left + x + X * LANES <= padded.len());
        for kw in 0..3 {
            // SAFETY: inside the padded row (asserted above; kw ≤ 2 ≤ LEAD).
            let seg: [__m512; X] = std::array::from_fn(|xb| unsafe {
                _mm512_loadu_ps(padded.as_ptr().add(LEAD + left - kw + x + xb * LANES))
            });
            for (c, acc) in acc.iter_mut().enumerate() {
                let kv = _mm512_set1_ps(taps[kw * R + c]);
                for (a, &sv) in acc.iter_mut().zip(&seg) {
                    *a = _mm512_fmadd_ps(kv, sv, *a);
                }
            }
        }
    });
    for (c, acc) in acc.iter().enumerate() {
        for (xb, &a) in acc.iter().enumerate() {
            let mut lanes = [0f32; LANES];
            // SAFETY: sixteen values into an array of sixteen.
            unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), a) };
            // SAFETY: the caller's promise.
            unsafe { write(job, m, c, y, x + xb * LANES, |k| lanes[k]) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::winograd::tests::{direct, values};

    /// Every body this processor runs (AVX-512, AVX2, portable) transposes into 1 to 7
    /// channels, rows of 23 and 150 pixels, with and without factors, to the direct f64 sum
    /// (the Winograd tests' definition) within 4 f32 epsilons of each output's sum of
    /// magnitudes.
    #[test]
    fn every_body_equals_the_direct_sum() {
        let (n, cols, h) = (2, 5, 9);
        for kernel in Kernel::available() {
            for (rows, w, top, left) in
                [(1, 150, 1, 1), (3, 23, 0, 2), (6, 150, 2, 0), (7, 23, 1, 1)]
            {
                // the map's output, which the transpose reads: padding top/left, bottom/right 1
                let (oh, ow) = (h + top - 1, w + left - 1);
                let s = Shape {
                    n,
                    rows,
                    h,
                    w,
                    cols,
                    oh,
                    ow,
                    top,
                    left,
                };
                let src = values(n * cols * oh * ow, 0.53);
                let wt = values(cols * rows * 9, 0.91);
                let factors = values(n * rows * h * w, 0.37);
                // the same transpose in the Winograd kernels' terms
                let ws = crate::winograd::Shape::of_map(n, [h, w], [top, left], [oh, ow], true);
                let want = direct(&src, &wt, cols, rows, ws, true);
                let abs = |v: &[f32]| -> Vec<f32> { v.iter().map(|x| x.abs()).collect() };
                let bound = direct(&abs(&src), &abs(&wt), cols, rows, ws, true);
                for scaled in [false, true] {
                    let mut out = vec![std::mem::MaybeUninit::new(f32::NAN); n * rows * h * w];
                    let scale = scaled.then_some(Scale {
                        x: &factors,
                        maps: 1,
                    });
                    transpose_by(kernel, Source::Plain(&src), &wt, s, &mut out, scale);
                    for (at, v) in out.into_iter().enumerate() {
                        // SAFETY: initialised (NaN where not written, which fails below).
                        let v = f64::from(unsafe { v.assume_init() });
                        let f = if scaled { f64::from(factors[at]) } else { 1.0 };
                        let tol = 4.0 * f64::from(f32::EPSILON) * bound[at] * f.abs() + 1e-30;
                        assert!(
                            (v - want[at] * f).abs() <= tol,
                            "{kernel:?}, {rows} rows, width {w}, scaled {scaled}, at {at}: {v} \
                             against {}",
                            want[at] * f
                        );
                    }
                }
            }
        }
    }
}
