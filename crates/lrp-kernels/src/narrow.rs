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
    let job = Job {
        src,
        wt,
        s,
        dst: SendPtr(out.as_mut_ptr() as *mut f32),
        scale,
    };
    (0..s.n * bands).into_par_iter().for_each_init(
        || Buffers {
            acc: vec![0f32; BAND * s.rows * padded_width(s.w)],
            row: vec![0f32; (BAND + 2) * row_len(&s)],
        },
        |buf, item| {
            let (m, band) = (item / bands, item % bands);
            let ys = band * BAND..((band + 1) * BAND).min(s.h);
            // SAFETY: rows `ys` of image `m` are this item's alone; `dst` spans `out`, whose
            // size was checked above.
            unsafe { run(job, m, ys, buf) };
        },
    );
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

/// A work item's accumulators (its band's output rows, `rows` channels each) and padded
/// relevance rows (the band's and two more).
struct Buffers {
    acc: Vec<f32>,
    row: Vec<f32>,
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
    wt: &'a [f32],
    s: Shape,
    dst: SendPtr,
    scale: Option<Scale<'a>>,
}

/// Output rows `ys` of image `m`, by the fastest body this processor runs (the Winograd
/// kernels' choice).
///
/// # Safety
/// `job.dst` must point at the `[n, rows, h, w]` output, whose rows `ys` of image `m` no one
/// else reads or writes during the call.
unsafe fn run(job: Job<'_>, m: usize, ys: std::ops::Range<usize>, buf: &mut Buffers) {
    match Kernel::best() {
        // SAFETY: the processor has AVX-512F and FMA (detected); the caller's promise.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { rows_avx512(job, m, ys, buf) },
        // SAFETY: the processor has AVX2 and FMA (detected); the caller's promise.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { rows_avx2(job, m, ys, buf) },
        // SAFETY: the caller's promise.
        Kernel::Portable => unsafe { rows::<false>(job, m, ys, buf) },
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn rows_avx512(job: Job<'_>, m: usize, ys: std::ops::Range<usize>, buf: &mut Buffers) {
    // SAFETY: the caller's promise.
    unsafe { rows::<true>(job, m, ys, buf) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2(job: Job<'_>, m: usize, ys: std::ops::Range<usize>, buf: &mut Buffers) {
    // SAFETY: the caller's promise.
    unsafe { rows::<true>(job, m, ys, buf) }
}

/// Output rows `ys` of image `m`; multiply-adds fused where `FMA`.
///
/// # Safety
/// As [`run`].
#[inline(always)]
unsafe fn rows<const FMA: bool>(
    job: Job<'_>,
    m: usize,
    ys: std::ops::Range<usize>,
    buf: &mut Buffers,
) {
    let Job {
        src,
        wt,
        s,
        dst,
        scale,
    } = job;
    let (w, ow, rows) = (s.w, s.ow, s.rows);
    let wp = padded_width(w);
    let plane_in = s.oh * ow;
    let plane = s.h * w;
    let Buffers { acc, row } = buf;
    let len = row_len(&s);
    // relevance rows oy0 .. oy1 feed output rows ys (oy = y + top − kh, kh < 3)
    let oy0 = (ys.start + s.top).saturating_sub(2);
    let oy1 = (ys.end - 1 + s.top + 1).min(s.oh);
    let band = &mut acc[..ys.len() * rows * wp];
    band.fill(0.0);
    for o in 0..s.cols {
        // each relevance row once (divided as it is read), LEAD zeros before it
        for oy in oy0..oy1 {
            let padded = &mut row[(oy - oy0) * len..][..len];
            let at = (m * s.cols + o) * plane_in + oy * ow;
            padded[..LEAD].fill(0.0);
            padded[LEAD + ow..].fill(0.0);
            let dst_row = &mut padded[LEAD..LEAD + ow];
            match src {
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
        let taps = &wt[(o * rows) * 9..(o * rows + rows) * 9];
        for (yi, y) in ys.clone().enumerate() {
            let out_rows = &mut band[yi * rows * wp..][..rows * wp];
            for kh in 0..3 {
                let Some(oy) = (y + s.top).checked_sub(kh).filter(|&oy| oy < s.oh) else {
                    continue;
                };
                let padded = &row[(oy - oy0) * len..][..len];
                // the three taps of a row of the kernel per chunk of LANES columns, the sums
                // held in a register meanwhile (column x reads relevance column x + left − kw)
                for (c, a) in out_rows.chunks_exact_mut(wp).enumerate() {
                    let k = &taps[c * 9 + kh * 3..][..3];
                    for (x0, a) in a.chunks_exact_mut(LANES).enumerate() {
                        let a: &mut [f32; LANES] = a.try_into().expect("a chunk");
                        let mut v = *a;
                        for (kw, &kv) in k.iter().enumerate() {
                            let seg: &[f32; LANES] = padded[LEAD + s.left - kw + x0 * LANES..]
                                [..LANES]
                                .try_into()
                                .expect("inside the padded row");
                            for (v, &sv) in v.iter_mut().zip(seg) {
                                *v = if FMA {
                                    kv.mul_add(sv, *v)
                                } else {
                                    *v + kv * sv
                                };
                            }
                        }
                        *a = v;
                    }
                }
            }
        }
    }
    for (yi, y) in ys.enumerate() {
        let acc = &band[yi * rows * wp..][..rows * wp];
        for (c, a) in acc.chunks_exact(wp).map(|a| &a[..w]).enumerate() {
            let at = (m * rows + c) * plane + y * w;
            // SAFETY: row y of channel c of image m lies inside the output and is this
            // call's alone (the caller's promise).
            let out = unsafe { std::slice::from_raw_parts_mut(dst.0.add(at), w) };
            match scale {
                None => out.copy_from_slice(a),
                Some(sc) => {
                    let xat = ((m / sc.maps) * rows + c) * plane + y * w;
                    for ((o, &v), &f) in out.iter_mut().zip(a).zip(&sc.x[xat..xat + w]) {
                        *o = v * f;
                    }
                }
            }
        }
    }
}
