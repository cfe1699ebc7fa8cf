//! 3×3 convolutions with stride 1 by Winograd's minimal filtering (Lavin & Gray, "Fast
//! Algorithms for Convolutional Neural Networks", 2016), in two tile sizes:
//!
//! - F(2×2, 3×3): every 2×2 block of outputs of every channel pair costs 16 multiplications
//!   instead of 36 (2.25× fewer). The transforms' coefficients are 0, ±1 and ±½, exact in
//!   binary, so the rounding error is that of a direct sum of a few more terms.
//! - F(4×4, 3×3): 36 multiplications per 4×4 outputs instead of 144 (4× fewer), with the
//!   interpolation points 0, ±1, ±2 (coefficients up to 8 and 1/24), so the rounding error is
//!   several times a direct sum's.
//!
//! One routine, [`conv`], computes `y[n, o, p, q] = Σ_{c, a, b} f[o, c, a, b] · x[n, c, p + a −
//! top, q + b − left]` (zero outside the image) for a [`Filter`] `f`. A layer's map and its
//! transpose are both of that form: the transpose's filter is the weight with its channel axes
//! swapped and its taps reversed, and its padding `2 − top`, `2 − left`. What it reads may be a
//! ratio formed as it is read ([`Source::Ratio`], a rule's `r / stab(z)`), and its outputs may
//! be multiplied by factors as they are written ([`Scale`], a rule's activations), which saves
//! the rules two passes over their largest tensors.
//!
//! The work is cut into blocks of output tiles small enough that a block's transformed inputs
//! and products stay in the core's caches; blocks run in parallel on the current rayon pool.
//! The code is generic over the transformed tile's side `IN` (4 or 6) and the output tile's
//! `OUT` (2 or 4).

use rayon::prelude::*;

/// Rows (output channels) of the product's register block.
const MR: usize = 8;
/// Columns (output tiles) of the product's register block.
const NR: usize = 32;
/// Bytes of a block's transformed inputs and products together (per worker).
const BLOCK_BYTES: usize = 1 << 20;
/// Most tiles in a block.
const MAX_BLOCK_TILES: usize = 8 * NR;

/// The tile size: F(2×2, 3×3) or F(4×4, 3×3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tile {
    /// 2×2 outputs from 4×4 inputs.
    F2,
    /// 4×4 outputs from 6×6 inputs.
    F4,
}

impl Tile {
    /// The transformed tile's side.
    fn side(self) -> usize {
        match self {
            Tile::F2 => 4,
            Tile::F4 => 6,
        }
    }
}

/// A bank of 3×3 filters in Winograd form (`G g Gᵀ` per output–input channel pair), laid out
/// for the product: `[row block][position][input channel][row within block]`, the output
/// channels padded with zero filters to a multiple of the row block.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    u: Vec<f32>,
    rows: usize,
    cols: usize,
    tile: Tile,
}

impl Filter {
    /// The filters of a layer's map (`transpose == false`: `f[o, c] = w[o, c]`) or of its
    /// transpose (`f[c, o, a, b] = w[o, c, 2 − a, 2 − b]`), for a standard-layout weight
    /// `w` of shape `[o, c, 3, 3]`.
    pub(crate) fn new(w: &[f32], o: usize, c: usize, transpose: bool, tile: Tile) -> Self {
        assert_eq!(w.len(), o * c * 9, "winograd filter: weight size");
        let (rows, cols) = if transpose { (c, o) } else { (o, c) };
        let side = tile.side();
        let positions = side * side;
        let blocks = rows.div_ceil(MR);
        let mut u = vec![0f32; blocks * positions * cols * MR];
        u.par_chunks_mut(positions * cols * MR)
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
                    // G along the rows (per tap column b), then along the columns
                    let mut cols_g = [[[0f32; MR]; 6]; 3];
                    for (b, out) in cols_g.iter_mut().enumerate() {
                        filter_1d(tile, [g[0][b], g[1][b], g[2][b]], out);
                    }
                    for i in 0..side {
                        let mut row = [[0f32; MR]; 6];
                        filter_1d(tile, [cols_g[0][i], cols_g[1][i], cols_g[2][i]], &mut row);
                        for (j, lanes) in row[..side].iter().enumerate() {
                            block[((i * side + j) * cols + k) * MR..][..MR].copy_from_slice(lanes);
                        }
                    }
                }
            });
        Filter {
            u,
            rows,
            cols,
            tile,
        }
    }

    fn row_blocks(&self) -> usize {
        self.rows.div_ceil(MR)
    }

    /// The packed `[cols][MR]` panel of row block `rb` at position `p`.
    fn panel(&self, rb: usize, p: usize) -> &[f32] {
        let side = self.tile.side();
        let len = self.cols * MR;
        &self.u[(rb * side * side + p) * len..][..len]
    }
}

/// `G·g` along one axis, lane-wise, into `out[..side]`: F(2×2, 3×3)'s `G` is `[[1, 0, 0], [½,
/// ½, ½], [½, −½, ½], [0, 0, 1]]`; F(4×4, 3×3)'s is `[[¼, 0, 0], [−⅙, −⅙, −⅙], [−⅙, ⅙, −⅙],
/// [1/24, 1/12, ⅙], [1/24, −1/12, ⅙], [0, 0, 1]]`.
#[inline(always)]
fn filter_1d<const L: usize>(tile: Tile, g: [[f32; L]; 3], out: &mut [[f32; L]; 6]) {
    let [g0, g1, g2] = g;
    for l in 0..L {
        let (a, b, c) = (g0[l], g1[l], g2[l]);
        match tile {
            Tile::F2 => {
                out[0][l] = a;
                out[1][l] = 0.5 * (a + b + c);
                out[2][l] = 0.5 * (a - b + c);
                out[3][l] = c;
            }
            Tile::F4 => {
                out[0][l] = a / 4.0;
                out[1][l] = -(a + b + c) / 6.0;
                out[2][l] = -(a - b + c) / 6.0;
                out[3][l] = a / 24.0 + b / 12.0 + c / 6.0;
                out[4][l] = a / 24.0 - b / 12.0 + c / 6.0;
                out[5][l] = c;
            }
        }
    }
}

/// `Bᵀ·d` along one axis for `IN`-point inputs, lane-wise: F(2×2, 3×3)'s `Bᵀ` is `[[1, 0, −1,
/// 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]]`; F(4×4, 3×3)'s is `[[4, 0, −5, 0, 1, 0],
/// [0, −4, −4, 1, 1, 0], [0, 4, −4, −1, 1, 0], [0, −2, −1, 2, 1, 0], [0, 2, −1, −2, 1, 0], [0,
/// 4, 0, −5, 0, 1]]`.
#[inline(always)]
fn input_1d<const IN: usize, const L: usize>(d: &[[f32; L]; IN]) -> [[f32; L]; IN] {
    let mut v = [[0f32; L]; IN];
    for l in 0..L {
        if IN == 4 {
            let (d0, d1, d2, d3) = (d[0][l], d[1][l], d[2][l], d[3 % IN][l]);
            v[0][l] = d0 - d2;
            v[1][l] = d1 + d2;
            v[2][l] = d2 - d1;
            v[3 % IN][l] = d1 - d3;
        } else {
            let (d0, d1, d2, d3, d4, d5) = (
                d[0][l],
                d[1][l],
                d[2][l],
                d[3 % IN][l],
                d[4 % IN][l],
                d[5 % IN][l],
            );
            v[0][l] = 4.0 * d0 - 5.0 * d2 + d4;
            v[1][l] = d3 + d4 - 4.0 * (d1 + d2);
            v[2][l] = d4 - d3 + 4.0 * (d1 - d2);
            v[3 % IN][l] = d4 - d2 + 2.0 * (d3 - d1);
            v[4 % IN][l] = d4 - d2 - 2.0 * (d3 - d1);
            v[5 % IN][l] = 4.0 * d1 - 5.0 * d3 + d5;
        }
    }
    v
}

/// `Aᵀ·m` along one axis, lane-wise, into `OUT` values: F(2×2, 3×3)'s `Aᵀ` is `[[1, 1, 1, 0],
/// [0, 1, −1, −1]]`; F(4×4, 3×3)'s is `[[1, 1, 1, 1, 1, 0], [0, 1, −1, 2, −2, 0], [0, 1, 1, 4,
/// 4, 0], [0, 1, −1, 8, −8, 1]]`.
#[inline(always)]
fn output_1d<const IN: usize, const OUT: usize, const L: usize>(
    m: &[[f32; L]; IN],
) -> [[f32; L]; OUT] {
    let mut y = [[0f32; L]; OUT];
    for l in 0..L {
        if IN == 4 {
            let (m0, m1, m2, m3) = (m[0][l], m[1][l], m[2][l], m[3 % IN][l]);
            y[0][l] = m0 + m1 + m2;
            y[1 % OUT][l] = m1 - m2 - m3;
        } else {
            let (m0, m1, m2, m3, m4, m5) = (
                m[0][l],
                m[1][l],
                m[2][l],
                m[3 % IN][l],
                m[4 % IN][l],
                m[5 % IN][l],
            );
            let (s1, d1, s2, d2) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
            y[0][l] = m0 + s1 + s2;
            y[1 % OUT][l] = d1 + 2.0 * d2;
            y[2 % OUT][l] = s1 + 4.0 * s2;
            y[3 % OUT][l] = d1 + 8.0 * d2 + m5;
        }
    }
    y
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

/// What a convolution reads: an input `x` (`[n, cols, h, w]`), or the ratio `r / stab(z + b)`
/// of a relevance `r` (`[n, cols, h, w]`) and a denominator `z` (`[n / maps, cols, h, w]`, row
/// `m` of `r` divided by row `m / maps` of `z`) with a bias `b` per channel, formed as it is
/// read, in f64 when `wide` (f32 otherwise, without a bias).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source<'a> {
    Plain(&'a [f32]),
    Ratio {
        r: &'a [f32],
        z: &'a [f32],
        maps: usize,
        stab: crate::Stabilizer,
        bias: Option<&'a [f64]>,
        wide: bool,
    },
}

impl Source<'_> {
    fn len(&self) -> usize {
        match self {
            Source::Plain(x) => x.len(),
            Source::Ratio { r, .. } => r.len(),
        }
    }
}

/// A factor for every output: output row `m` (an `[rows, oh, ow]` block) is multiplied by row
/// `m / maps` of `x` (`[n / maps, rows, oh, ow]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scale<'a> {
    pub x: &'a [f32],
    pub maps: usize,
}

/// The convolution of `x` with `f` (see the module docs) into `out`, every element of which is
/// written; with `scale`, each output multiplied by its factor.
pub(crate) fn conv(
    x: Source<'_>,
    f: &Filter,
    s: Shape,
    out: &mut [std::mem::MaybeUninit<f32>],
    scale: Option<Scale<'_>>,
) {
    let (rows, cols) = (f.rows, f.cols);
    assert!(s.top <= 2 && s.left <= 2, "winograd: padding above 2");
    assert_eq!(x.len(), s.n * cols * s.h * s.w, "winograd: input size");
    if let Source::Ratio {
        z,
        maps,
        bias,
        wide,
        ..
    } = x
    {
        assert!(
            maps > 0 && s.n.is_multiple_of(maps) && z.len() * maps == x.len(),
            "winograd: denominators' size"
        );
        assert!(
            bias.is_none_or(|b| wide && b.len() == cols),
            "winograd: a bias needs f64 and one value per channel"
        );
    }
    assert_eq!(out.len(), s.n * rows * s.oh * s.ow, "winograd: output size");
    if let Some(sc) = scale {
        assert!(
            sc.maps > 0 && s.n.is_multiple_of(sc.maps) && sc.x.len() * sc.maps == out.len(),
            "winograd: factors' size"
        );
    }
    let side = f.tile.side();
    let step = side - 2;
    let (th, tw) = (s.oh.div_ceil(step), s.ow.div_ceil(step));
    let total = s.n * th * tw;
    if total == 0 {
        return;
    }
    let positions = side * side;
    let padded_rows = f.row_blocks() * MR;
    let per_tile = positions * (cols + padded_rows) * std::mem::size_of::<f32>();
    let tb = (BLOCK_BYTES / per_tile / NR * NR).clamp(NR, MAX_BLOCK_TILES);
    let kernel = Kernel::best();
    let dst = SendPtr(out.as_mut_ptr() as *mut f32);
    (0..total.div_ceil(tb)).into_par_iter().for_each_init(
        || {
            (
                vec![0f32; positions * cols * (tb + SLACK)],
                vec![0f32; positions * padded_rows * tb + SLACK],
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
                scale,
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
/// padded][tb]` and [`SLACK`], `P` the positions of a transformed tile), and where its output
/// goes.
struct Block<'a> {
    x: Source<'a>,
    f: &'a Filter,
    s: Shape,
    runs: &'a [Run],
    v: &'a mut [f32],
    m: &'a mut [f32],
    tb: usize,
    dst: SendPtr,
    scale: Option<Scale<'a>>,
}

impl Block<'_> {
    /// Transforms the inputs, multiplies with `kernel` (see [`products_with`]) and writes the
    /// outputs.
    ///
    /// # Safety
    /// As [`transform_outputs`].
    #[inline(always)]
    unsafe fn run(self, kernel: impl Fn(usize, &[f32], &[f32], usize, &mut [f32], usize)) {
        // SAFETY: the caller's promise.
        unsafe {
            match self.f.tile {
                Tile::F2 => self.run_tile::<4, 2>(kernel),
                Tile::F4 => self.run_tile::<6, 4>(kernel),
            }
        }
    }

    /// [`run`](Self::run) for `IN`×`IN` transformed tiles of `OUT`×`OUT` outputs.
    ///
    /// # Safety
    /// As [`transform_outputs`].
    #[inline(always)]
    unsafe fn run_tile<const IN: usize, const OUT: usize>(
        self,
        kernel: impl Fn(usize, &[f32], &[f32], usize, &mut [f32], usize),
    ) {
        let ldv = self.tb + SLACK;
        let nb = self.runs.iter().map(|r| r.len).sum::<usize>();
        transform_inputs::<IN, OUT>(self.x, self.f.cols, &self.s, self.runs, self.v, ldv);
        products_with(self.f, self.v, ldv, self.m, self.tb, nb, kernel);
        // SAFETY: the caller's promise.
        unsafe {
            transform_outputs::<IN, OUT>(
                self.m,
                self.f.rows,
                &self.s,
                self.runs,
                self.tb,
                self.dst,
                self.scale,
            )
        };
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
/// Length of a row buffer: a chunk's columns (at most 4 per tile, and the tiles' overlap).
const ROW: usize = 4 * (RUN_CHUNK + 1);
/// Length of the buffers of one phase of a row's columns (column `k·OUT + q` is phase `q`'s
/// `k`): a chunk's tiles and one more, and room for a whole group of [`LANES`] tiles from any
/// chunk's last.
const PHASE: usize = RUN_CHUNK + LANES + 1;

/// `V[p][c][tile] = (Bᵀ d B)[p]` of every tile's `IN`×`IN` input patch `d` (zero outside the
/// image), tiles `OUT` apart; `v` holds `[IN·IN][cols][ld]` with `ld = tb + SLACK`. Columns
/// past a run's end may be overwritten with garbage; a later run (processed after it) writes
/// its own.
#[inline(always)]
fn transform_inputs<const IN: usize, const OUT: usize>(
    x: Source<'_>,
    cols: usize,
    s: &Shape,
    runs: &[Run],
    v: &mut [f32],
    ld: usize,
) {
    let plane = s.h * s.w;
    let mut rows = [[0f32; ROW]; IN];
    let mut phases = [[[0f32; PHASE]; OUT]; IN];
    for run in runs {
        for c in 0..cols {
            let at = (run.n * cols + c) * plane;
            let (img, den) = match x {
                Source::Plain(x) => (&x[at..][..plane], None),
                Source::Ratio {
                    r,
                    z,
                    maps,
                    stab,
                    bias,
                    wide,
                } => (
                    &r[at..][..plane],
                    Some((
                        &z[((run.n / maps) * cols + c) * plane..][..plane],
                        stab,
                        bias.map_or(0.0, |b| b[c]),
                        wide,
                    )),
                ),
            };
            for start in (0..run.len).step_by(RUN_CHUNK) {
                let len = (run.len - start).min(RUN_CHUNK);
                let x0 = (OUT * (run.tx + start)) as isize - s.left as isize;
                let y0 = (OUT * run.ty) as isize - s.top as isize;
                // whole groups of OUT columns, covering the chunk's OUT·len + IN − OUT
                let width = OUT * (len + 1);
                for (i, buf) in rows.iter_mut().enumerate() {
                    let y = y0 + i as isize;
                    let buf = &mut buf[..width];
                    if y < 0 || y >= s.h as isize {
                        buf.fill(0.0);
                        continue;
                    }
                    let lo = (-x0).clamp(0, width as isize) as usize;
                    let hi = (s.w as isize - x0).clamp(lo as isize, width as isize) as usize;
                    let cols = y as usize * s.w + (x0 + lo as isize) as usize..;
                    buf[..lo].fill(0.0);
                    let src = &img[cols.clone()][..hi - lo];
                    match den {
                        None => buf[lo..hi].copy_from_slice(src),
                        Some((z, stab, _, false)) => {
                            for ((b, &r), &z) in buf[lo..hi].iter_mut().zip(src).zip(&z[cols]) {
                                *b = r / stab.apply(z);
                            }
                        }
                        Some((z, stab, bias, true)) => {
                            for ((b, &r), &z) in buf[lo..hi].iter_mut().zip(src).zip(&z[cols]) {
                                *b = (f64::from(r) / stab.apply_f64(f64::from(z) + bias)) as f32;
                            }
                        }
                    }
                    buf[hi..].fill(0.0);
                }
                for (row, phase) in rows.iter().zip(phases.iter_mut()) {
                    for (k, group) in row[..width].chunks_exact(OUT).enumerate() {
                        for q in 0..OUT {
                            phase[q][k] = group[q];
                        }
                    }
                }
                for l0 in (0..len).step_by(LANES) {
                    let t = input_lanes::<IN, OUT>(&phases, l0);
                    let at = c * ld + run.at + start + l0;
                    for (i, row) in t.iter().enumerate() {
                        for (j, lanes) in row.iter().enumerate() {
                            v[(i * IN + j) * cols * ld + at..][..LANES].copy_from_slice(lanes);
                        }
                    }
                }
            }
        }
    }
}

/// The input transform of the [`LANES`] tiles from `l0`, whose rows' columns are split into
/// `OUT` phases (tile `l` reading column `j` at phase `j % OUT`, index `l + j / OUT`; past a
/// chunk's width the tiles are garbage).
#[inline(always)]
fn input_lanes<const IN: usize, const OUT: usize>(
    phases: &[[[f32; PHASE]; OUT]; IN],
    l0: usize,
) -> [[[f32; LANES]; IN]; IN] {
    // along each row, then along the columns
    let mut e = [[[0f32; LANES]; IN]; IN];
    for (i, phase) in phases.iter().enumerate() {
        let d: [[f32; LANES]; IN] = std::array::from_fn(|j| {
            phase[j % OUT][l0 + j / OUT..][..LANES]
                .try_into()
                .expect("inside the buffer")
        });
        e[i] = input_1d::<IN, LANES>(&d);
    }
    let mut t = [[[0f32; LANES]; IN]; IN];
    for j in 0..IN {
        let col: [[f32; LANES]; IN] = std::array::from_fn(|i| e[i][j]);
        let v = input_1d::<IN, LANES>(&col);
        for i in 0..IN {
            t[i][j] = v[i];
        }
    }
    t
}

/// Writes `y = Aᵀ M A` of every tile's products `M[p][o][tile]` (`m` holds `[IN·IN][rows
/// padded][tb]` and [`LANES`] values of slack) to its `OUT`×`OUT` output pixels (those inside
/// the output), times their factors with `scale`.
///
/// # Safety
/// `dst` must point at an `[n, rows, oh, ow]` array that no one else reads or writes at the
/// runs' pixels during the call.
#[inline(always)]
unsafe fn transform_outputs<const IN: usize, const OUT: usize>(
    m: &[f32],
    rows: usize,
    s: &Shape,
    runs: &[Run],
    tb: usize,
    dst: SendPtr,
    scale: Option<Scale<'_>>,
) {
    let padded_rows = (m.len() - SLACK) / (IN * IN * tb);
    let plane = s.oh * s.ow;
    for run in runs {
        for o in 0..rows {
            for l0 in (0..run.len).step_by(LANES) {
                let len = (run.len - l0).min(LANES);
                let at = run.at + l0;
                let ins: [[&[f32; LANES]; IN]; IN] = std::array::from_fn(|i| {
                    std::array::from_fn(|j| {
                        m[((i * IN + j) * padded_rows + o) * tb + at..][..LANES]
                            .try_into()
                            .expect("slack after the last row")
                    })
                });
                let lines = output_lanes::<IN, OUT>(&ins);
                let x0 = OUT * (run.tx + l0);
                let width = (OUT * len).min(s.ow - x0);
                for (i, line) in lines.iter().enumerate() {
                    let y = OUT * run.ty + i;
                    if y >= s.oh {
                        break;
                    }
                    let at = (run.n * rows + o) * plane + y * s.ow + x0;
                    // SAFETY: (n, o, y, x0 .. x0 + width) lies inside the output (y < oh,
                    // x0 + width <= ow), and belongs to this run's tiles (the caller's promise).
                    let out = unsafe { std::slice::from_raw_parts_mut(dst.0.add(at), width) };
                    match scale {
                        None => out.copy_from_slice(&line[..width]),
                        Some(sc) => {
                            let img = run.n / sc.maps;
                            let xs = &sc.x[(img * rows + o) * plane + y * s.ow + x0..][..width];
                            for ((o, &v), &f) in out.iter_mut().zip(&line[..width]).zip(xs) {
                                *o = v * f;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The output transform of [`LANES`] tiles: `OUT` output rows (tile `l` at columns `OUT·l ..
/// OUT·l + OUT`; a line holds `OUT · LANES` values).
#[inline(always)]
fn output_lanes<const IN: usize, const OUT: usize>(
    ins: &[[&[f32; LANES]; IN]; IN],
) -> [[f32; 4 * LANES]; OUT] {
    // along the columns (combining rows i), then along each row
    let mut t = [[[0f32; LANES]; IN]; OUT];
    for j in 0..IN {
        let col: [[f32; LANES]; IN] = std::array::from_fn(|i| *ins[i][j]);
        let y = output_1d::<IN, OUT, LANES>(&col);
        for a in 0..OUT {
            t[a][j] = y[a];
        }
    }
    let mut lines = [[0f32; 4 * LANES]; OUT];
    for (line, t) in lines.iter_mut().zip(&t) {
        let y = output_1d::<IN, OUT, LANES>(t);
        for (l, group) in line[..OUT * LANES].chunks_exact_mut(OUT).enumerate() {
            for b in 0..OUT {
                group[b] = y[b][l];
            }
        }
    }
    lines
}

/// Whether this processor runs the products with vector instructions (AVX2 and FMA, or
/// AVX-512); without them the direct convolutions are faster.
pub(crate) fn fast() -> bool {
    !matches!(Kernel::best(), Kernel::Portable)
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
    /// Every kernel this processor can run, slowest first.
    fn available() -> Vec<Kernel> {
        let mut all = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            let fma = std::arch::is_x86_feature_detected!("fma");
            if fma && std::arch::is_x86_feature_detected!("avx2") {
                all.push(Kernel::Avx2);
            }
            if fma && std::arch::is_x86_feature_detected!("avx512f") {
                all.push(Kernel::Avx512);
            }
        }
        all
    }

    /// The fastest kernel this processor runs (detected once).
    fn best() -> Kernel {
        static BEST: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| *Kernel::available().last().expect("the portable kernel"))
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
    let positions = f.tile.side() * f.tile.side();
    assert!(
        v.len() >= positions * cols * ldv
            && m.len() >= positions * padded_rows * tb
            && nb <= tb
            && tb <= ldv
    );
    assert!(tb.is_multiple_of(NR) && cols > 0);
    for rb in 0..f.row_blocks() {
        for p in 0..positions {
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
        conv(Source::Plain(x), f, s, &mut out, None);
        // SAFETY: initialised above (and overwritten).
        out.into_iter()
            .map(|v| unsafe { v.assume_init() })
            .collect()
    }

    /// Every kernel the processor has, both tiles, odd and even sizes (not multiples of the tile), paddings 0 to 2,
    /// channel counts off the register block, blocks that end inside a tile row, the map and
    /// its transpose: within a small multiple of f32 rounding of the direct sum in f64, relative
    /// to the sum of the terms' magnitudes.
    #[test]
    fn matches_the_direct_convolution() {
        let kernels = Kernel::available();
        for (n, c, o, h, w, top, left, bottom, right) in [
            (2, 3, 5, 7, 9, 1, 1, 1, 1),
            (1, 17, 9, 6, 5, 0, 0, 0, 0),
            (3, 8, 16, 5, 8, 2, 2, 2, 2),
            (2, 40, 33, 9, 75, 1, 2, 0, 1),
            (1, 8, 8, 150, 11, 1, 1, 1, 1),
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
                // Σ |w|·|x| bounds every output's terms
                let abs_x: Vec<f32> = x.iter().map(|v| v.abs()).collect();
                let abs_w: Vec<f32> = wt.iter().map(|v| v.abs()).collect();
                let bound = direct(&abs_x, &abs_w, o, c, s, transpose);
                for (tile, ulps) in [(Tile::F2, 8.0), (Tile::F4, 32.0)] {
                    let f = Filter::new(&wt, o, c, transpose, tile);
                    assert_eq!((f.rows, f.cols), (rows, cols));
                    let step = tile.side() - 2;
                    let (th, tw) = (s.oh.div_ceil(step), s.ow.div_ceil(step));
                    let positions = tile.side() * tile.side();
                    for &k in &kernels {
                        let mut out =
                            vec![std::mem::MaybeUninit::new(f32::NAN); n * rows * s.oh * s.ow];
                        let dst = SendPtr(out.as_mut_ptr() as *mut f32);
                        let total = n * th * tw;
                        let tb = NR;
                        let (mut v, mut m) = (
                            vec![0f32; positions * cols * (tb + SLACK)],
                            vec![0f32; positions * f.row_blocks() * MR * tb + SLACK],
                        );
                        for b in 0..total.div_ceil(tb) {
                            let runs = runs(b * tb, ((b + 1) * tb).min(total), th, tw);
                            let block = Block {
                                x: Source::Plain(&x),
                                f: &f,
                                s,
                                runs: &runs,
                                v: &mut v,
                                m: &mut m,
                                tb,
                                dst,
                                scale: None,
                            };
                            // SAFETY: blocks write disjoint pixels of `out`.
                            unsafe { k.run(block) };
                        }
                        // SAFETY: every element written (NaN otherwise, which fails below).
                        let got: Vec<f32> = out
                            .into_iter()
                            .map(|v| unsafe { v.assume_init() })
                            .collect();
                        let what =
                            format!("{tile:?} {k:?} transpose {transpose} n{n} c{c} o{o} {h}x{w}");
                        for (i, ((g, w), b)) in got.iter().zip(&want).zip(&bound).enumerate() {
                            assert!(
                                (*g as f64 - w).abs() <= ulps * f32::EPSILON as f64 * b.max(1e-30),
                                "{what}: element {i}: {g} vs {w} (terms' magnitude {b})"
                            );
                        }
                    }
                    for ((g, w), b) in run(&x, &f, s).iter().zip(&want).zip(&bound) {
                        assert!((*g as f64 - w).abs() <= ulps * f32::EPSILON as f64 * b.max(1e-30));
                    }
                }
            }
        }
    }
}
