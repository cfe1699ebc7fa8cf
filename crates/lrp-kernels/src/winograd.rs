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
const NR: usize = 48;
/// The fewest F(4×4, 3×3) tiles per image for which [`Tile::widest_for`] takes them (the
/// register block's width when the rule was measured, twelfth session).
const F4_MIN_TILES: usize = 32;
/// Bytes of a block's transformed inputs and products together (per worker).
const BLOCK_BYTES: usize = 1 << 20;
/// Most tiles in a block.
const MAX_BLOCK_TILES: usize = 8 * NR;
/// Values of padding after each position of a block's buffers (one cache line), so that the
/// transforms' sixteen or thirty-six streams, one per position, do not fall in the same cache
/// set (the buffers' natural position strides are multiples of 4 KiB).
const SKEW: usize = 16;

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

    /// Products per input–output channel pair of an `oh`×`ow` output: the tiles covering it
    /// (the last ones may overhang) times the positions of a transformed tile.
    fn products(self, oh: usize, ow: usize) -> usize {
        self.tiles(oh, ow) * self.side() * self.side()
    }

    /// Tiles covering an `oh`×`ow` output.
    fn tiles(self, oh: usize, ow: usize) -> usize {
        let step = self.side() - 2;
        oh.div_ceil(step) * ow.div_ceil(step)
    }

    /// F(4×4, 3×3) where it saves at least a third of F(2×2, 3×3)'s products on an `oh`×`ow`
    /// output and an image has at least [`F4_MIN_TILES`] of its tiles; F(2×2, 3×3) elsewhere.
    /// F(4×4, 3×3)'s transforms cost more, and its tiles overhang small outputs: at 14×14 it
    /// saves 27 % of the products and ran no faster. At 7×7 it saves 44 %, but an image's 4
    /// tiles fill a small part of a register block (the pass runs small groups of images) and
    /// the work splits into fewer blocks: ResNet-50's 7×7 layers ran up to 1.5× slower.
    pub(crate) fn widest_for(oh: usize, ow: usize) -> Tile {
        if 3 * Tile::F4.products(oh, ow) <= 2 * Tile::F2.products(oh, ow)
            && Tile::F4.tiles(oh, ow) >= F4_MIN_TILES
        {
            Tile::F4
        } else {
            Tile::F2
        }
    }
}

/// A bank of 3×3 filters in Winograd form (`G g Gᵀ` per output–input channel pair), laid out
/// for the product: `[position][row block][input channel][row within block]` (the products
/// take the row blocks of one position in turn, so the panels they read follow one another in
/// memory), the output channels padded with zero filters to a multiple of the row block.
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
        // Every value is written below (the lanes past the last row as zeros): no clearing
        // first, which would be one thread's pass over all of it.
        let mut u = Vec::<f32>::with_capacity(blocks * positions * cols * MR);
        let dst = SendPtr(u.spare_capacity_mut().as_mut_ptr().cast::<f32>());
        (0..blocks).into_par_iter().for_each(|rb| {
            let job = FilterBlock {
                w,
                c,
                rows,
                cols,
                transpose,
                tile,
                rb,
                stride: blocks * cols * MR,
            };
            #[cfg(target_arch = "x86_64")]
            if !matches!(Kernel::best(), Kernel::Portable) {
                // SAFETY: as below, and the processor has AVX2 (the AVX2 and AVX-512 kernels
                // need it).
                return unsafe { job.fill_avx2(dst) };
            }
            // SAFETY: `u` has room for every row block's panels, and row block rb writes only
            // its own.
            unsafe { job.fill(dst) }
        });
        // SAFETY: every value was written above (each row block's cols × MR values at every
        // position).
        unsafe { u.set_len(blocks * positions * cols * MR) };
        Filter {
            u,
            rows,
            cols,
            tile,
        }
    }

    /// Bytes of the transformed filters.
    pub(crate) fn bytes(&self) -> usize {
        self.u.len() * std::mem::size_of::<f32>()
    }

    fn row_blocks(&self) -> usize {
        self.rows.div_ceil(MR)
    }

    /// The packed `[cols][MR]` panel of row block `rb` at position `p`.
    fn panel(&self, rb: usize, p: usize) -> &[f32] {
        let len = self.cols * MR;
        &self.u[(p * self.row_blocks() + rb) * len..][..len]
    }
}

/// One row block's share of [`Filter::new`]: the transformed taps of rows `rb·MR ..` for every
/// position and input column.
struct FilterBlock<'a> {
    w: &'a [f32],
    c: usize,
    rows: usize,
    cols: usize,
    transpose: bool,
    tile: Tile,
    rb: usize,
    /// Values from one position's panels to the next's.
    stride: usize,
}

/// Input columns that [`FilterBlock::fill`] transforms before it writes them out, position by
/// position: the columns' values of one position are then written as one run (a few hundred
/// bytes) instead of one register's worth every `cols · MR` values, across 16 or 36 pages.
const FILTER_CHUNK: usize = 32;

impl FilterBlock<'_> {
    /// [`fill`](Self::fill) compiled for AVX2: the same operations in the same order (no
    /// contraction into fused multiply-adds), so the same values, eight lanes at a time.
    ///
    /// # Safety
    /// As [`fill`](Self::fill); the processor must have AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn fill_avx2(&self, dst: SendPtr) {
        // SAFETY: the caller's promise.
        unsafe { self.fill(dst) }
    }

    /// Writes the row block's panels: `dst[p·stride + (rb·cols + k)·MR + r]` is position `p`
    /// (row-major in the transformed tile) of `G g Gᵀ` for row `rb·MR + r` and column `k`
    /// (zero past the last row).
    ///
    /// # Safety
    /// `dst` must have room for the values written, and no one else may read or write them
    /// during the call.
    #[inline(always)]
    unsafe fn fill(&self, dst: SendPtr) {
        let FilterBlock {
            w,
            c,
            rows,
            cols,
            transpose,
            tile,
            rb,
            stride,
        } = *self;
        let side = tile.side();
        let r0 = rb * MR;
        let live = (rows - r0).min(MR);
        // the chunk's transformed columns, position after position (at most F(4×4, 3×3)'s)
        let mut chunk = [[[0f32; MR]; FILTER_CHUNK]; 6 * 6];
        for k0 in (0..cols).step_by(FILTER_CHUNK) {
            let kl = (cols - k0).min(FILTER_CHUNK);
            for (kc, k) in (k0..k0 + kl).enumerate() {
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
                        chunk[i * side + j][kc] = *lanes;
                    }
                }
            }
            for (p, values) in chunk[..side * side].iter().enumerate() {
                // SAFETY: `values` holds at least `kl` columns of MR values; they go to the
                // row block's panel at position p (the caller's promise).
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        values.as_ptr().cast::<f32>(),
                        dst.0.add(p * stride + (rb * cols + k0) * MR),
                        kl * MR,
                    )
                };
            }
        }
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

/// The arithmetic of the input and output transforms, on one group of lanes: plain arrays of
/// [`LANES`] values (vectorised by the compiler), or an AVX-512 register. Both run the same
/// formulas ([`input_1d`], [`output_1d`]) in the same order, so their results are identical.
trait Arith: Copy {
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn scale(self, k: f32) -> Self;
}

impl Arith for [f32; LANES] {
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        std::array::from_fn(|l| self[l] + o[l])
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        std::array::from_fn(|l| self[l] - o[l])
    }
    #[inline(always)]
    fn scale(self, k: f32) -> Self {
        std::array::from_fn(|l| k * self[l])
    }
}

/// `Bᵀ·d` along one axis for `IN`-point inputs: F(2×2, 3×3)'s `Bᵀ` is `[[1, 0, −1, 0], [0, 1,
/// 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]]`; F(4×4, 3×3)'s is `[[4, 0, −5, 0, 1, 0], [0, −4, −4, 1,
/// 1, 0], [0, 4, −4, −1, 1, 0], [0, −2, −1, 2, 1, 0], [0, 2, −1, −2, 1, 0], [0, 4, 0, −5, 0,
/// 1]]`.
#[inline(always)]
fn input_1d<const IN: usize, T: Arith>(d: [T; IN]) -> [T; IN] {
    let mut v = d;
    if IN == 4 {
        let (d0, d1, d2, d3) = (d[0], d[1], d[2], d[3 % IN]);
        v[0] = d0.sub(d2);
        v[1] = d1.add(d2);
        v[2] = d2.sub(d1);
        v[3 % IN] = d1.sub(d3);
    } else {
        let (d0, d1, d2, d3, d4, d5) = (d[0], d[1], d[2], d[3 % IN], d[4 % IN], d[5 % IN]);
        v[0] = d0.scale(4.0).sub(d2.scale(5.0)).add(d4);
        v[1] = d3.add(d4).sub(d1.add(d2).scale(4.0));
        v[2] = d4.sub(d3).add(d1.sub(d2).scale(4.0));
        v[3 % IN] = d4.sub(d2).add(d3.sub(d1).scale(2.0));
        v[4 % IN] = d4.sub(d2).sub(d3.sub(d1).scale(2.0));
        v[5 % IN] = d1.scale(4.0).sub(d3.scale(5.0)).add(d5);
    }
    v
}

/// `Aᵀ·m` along one axis, into `OUT` values: F(2×2, 3×3)'s `Aᵀ` is `[[1, 1, 1, 0], [0, 1, −1,
/// −1]]`; F(4×4, 3×3)'s is `[[1, 1, 1, 1, 1, 0], [0, 1, −1, 2, −2, 0], [0, 1, 1, 4, 4, 0], [0, 1,
/// −1, 8, −8, 1]]`.
#[inline(always)]
fn output_1d<const IN: usize, const OUT: usize, T: Arith>(m: [T; IN]) -> [T; OUT] {
    let mut y = [m[0]; OUT];
    if IN == 4 {
        let (m0, m1, m2, m3) = (m[0], m[1], m[2], m[3 % IN]);
        y[0] = m0.add(m1).add(m2);
        y[1 % OUT] = m1.sub(m2).sub(m3);
    } else {
        let (m0, m1, m2, m3, m4, m5) = (m[0], m[1], m[2], m[3 % IN], m[4 % IN], m[5 % IN]);
        let (s1, d1, s2, d2) = (m1.add(m2), m1.sub(m2), m3.add(m4), m3.sub(m4));
        y[0] = m0.add(s1).add(s2);
        y[1 % OUT] = d1.add(d2.scale(2.0));
        y[2 % OUT] = s1.add(s2.scale(4.0));
        y[3 % OUT] = d1.add(d2.scale(8.0)).add(m5);
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

impl Shape {
    /// The 3×3, stride-1 map over `n` images of `h × w` (`input`), padded by `pads` (top,
    /// left; at most 2), whose output is `oh × ow` (`output`); with `transpose`, its transpose,
    /// which reads the map's output and writes its input, padded by `2 − p`.
    pub(crate) fn of_map(
        n: usize,
        [h, w]: [usize; 2],
        [top, left]: [usize; 2],
        [oh, ow]: [usize; 2],
        transpose: bool,
    ) -> Shape {
        if transpose {
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
        }
    }
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
    let layout = Layout::new(tb, cols, padded_rows);
    let kernel = Kernel::best();
    let dst = SendPtr(out.as_mut_ptr() as *mut f32);
    (0..total.div_ceil(tb)).into_par_iter().for_each(|b| {
        layout.with_buffers(positions, |v, m| {
            let start = b * tb;
            let runs = runs(start, (start + tb).min(total), th, tw);
            let block = Block {
                x,
                f,
                s,
                runs: &runs,
                v,
                m,
                layout,
                dst,
                scale,
            };
            // SAFETY: the block's tiles cover output pixels no other block writes; `dst` spans
            // `out`, whose size was checked above.
            unsafe { kernel.run(block) };
        })
    });
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only used to write disjoint parts of one array from different threads (the pixels
// of different blocks, the panels of different row blocks).
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

/// Where a block's buffers hold what: `v[p·vpos + c·ldv + t]` is position `p` of input
/// channel `c` of the block's tile `t` (`ldv = tb + SLACK`), `m[p·mpos + o·tb + t]` position `p`
/// of its products for output channel `o` (rows padded to the register block); `P` positions.
#[derive(Debug, Clone, Copy)]
struct Layout {
    tb: usize,
    ldv: usize,
    vpos: usize,
    mpos: usize,
}

impl Layout {
    fn new(tb: usize, cols: usize, padded_rows: usize) -> Self {
        let ldv = tb + SLACK;
        Layout {
            tb,
            ldv,
            vpos: cols * ldv + SKEW,
            mpos: padded_rows * tb + SKEW,
        }
    }

    /// Buffers `v` and `m` for tiles of `positions` positions ([`SLACK`] values after `m`).
    fn buffers(&self, positions: usize) -> (Vec<f32>, Vec<f32>) {
        (
            vec![0f32; positions * self.vpos],
            vec![0f32; positions * self.mpos + SLACK],
        )
    }

    /// Calls `f` with buffers `v` and `m` as [`buffers`](Self::buffers) sizes them: this
    /// thread's, kept from call to call (grown where too small), so that a convolution neither
    /// allocates nor clears them. Their values are whatever an earlier block left (the blocks
    /// write what they read).
    fn with_buffers<R>(&self, positions: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
        let (vl, ml) = (positions * self.vpos, positions * self.mpos + SLACK);
        BUFFERS.with(|cell| match cell.try_borrow_mut() {
            Ok(mut kept) => {
                let (v, m) = &mut *kept;
                for (b, len) in [(&mut *v, vl), (&mut *m, ml)] {
                    if b.len() < len {
                        *b = vec![0f32; len];
                    }
                }
                f(&mut v[..vl], &mut m[..ml])
            }
            // (in use further up this thread's stack: buffers of its own)
            Err(_) => {
                let (mut v, mut m) = self.buffers(positions);
                f(&mut v, &mut m)
            }
        })
    }
}

thread_local! {
    /// The block buffers of [`Layout::with_buffers`] on this thread.
    static BUFFERS: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// One block's work: its tiles' runs, its buffers (see [`Layout`]), and where its output goes.
struct Block<'a> {
    x: Source<'a>,
    f: &'a Filter,
    s: Shape,
    runs: &'a [Run],
    v: &'a mut [f32],
    m: &'a mut [f32],
    layout: Layout,
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
    unsafe fn run<const AVX512: bool>(
        self,
        kernel: impl Fn(usize, &[f32], &[f32], usize, &mut [f32], usize, usize),
    ) {
        // SAFETY: the caller's promise.
        unsafe {
            match self.f.tile {
                Tile::F2 => self.run_tile::<4, 2, AVX512>(kernel),
                Tile::F4 => self.run_tile::<6, 4, AVX512>(kernel),
            }
        }
    }

    /// [`run`](Self::run) for `IN`×`IN` transformed tiles of `OUT`×`OUT` outputs, the
    /// transforms by AVX-512 instructions where `AVX512`.
    ///
    /// # Safety
    /// As [`transform_outputs`]; with `AVX512`, the processor must have AVX-512F.
    #[inline(always)]
    unsafe fn run_tile<const IN: usize, const OUT: usize, const AVX512: bool>(
        self,
        kernel: impl Fn(usize, &[f32], &[f32], usize, &mut [f32], usize, usize),
    ) {
        let nb = self.runs.iter().map(|r| r.len).sum::<usize>();
        let l = self.layout;
        transform_inputs::<IN, OUT, AVX512>(self.x, self.f.cols, &self.s, self.runs, self.v, l);
        products_with(self.f, self.v, self.m, l, nb, kernel);
        // SAFETY: the caller's promise.
        unsafe {
            transform_outputs::<IN, OUT, AVX512>(
                self.m,
                self.f.rows,
                &self.s,
                self.runs,
                l,
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

/// How many channels ahead [`transform_inputs`] asks for the rows it reads: the next
/// channel's rows lie a whole plane further on, a jump the processor's prefetchers do not
/// follow, so without the hint its first rows wait on memory.
const PREFETCH_CHANNELS: usize = 2;

/// Asks the processor to fetch the input rows that [`transform_inputs`] reads for channel `c`
/// of image `n` at a chunk whose first column is `x0` and first row `y0` (`width` columns of
/// `IN` rows, those inside the image): of the relevance and its denominators for a ratio.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn prefetch_rows<const IN: usize>(
    x: Source<'_>,
    n: usize,
    c: usize,
    cols: usize,
    s: &Shape,
    x0: isize,
    y0: isize,
    width: usize,
) {
    let plane = s.h * s.w;
    let lo = (-x0).clamp(0, width as isize) as usize;
    let hi = (s.w as isize - x0).clamp(lo as isize, width as isize) as usize;
    if hi == lo {
        return;
    }
    let (first, second) = match x {
        Source::Plain(x) => (&x[(n * cols + c) * plane..][..plane], None),
        Source::Ratio { r, z, maps, .. } => (
            &r[(n * cols + c) * plane..][..plane],
            Some(&z[((n / maps) * cols + c) * plane..][..plane]),
        ),
    };
    for img in std::iter::once(first).chain(second) {
        for i in 0..IN {
            let y = y0 + i as isize;
            if y < 0 || y >= s.h as isize {
                continue;
            }
            let seg = &img[y as usize * s.w + (x0 + lo as isize) as usize..][..hi - lo];
            // one hint per cache line, and the last
            #[cfg(target_arch = "x86_64")]
            for k in (0..seg.len()).step_by(16).chain([seg.len() - 1]) {
                // SAFETY: a prefetch has no effect on memory and does not fault; the address
                // lies inside `img`.
                unsafe {
                    std::arch::x86_64::_mm_prefetch(
                        seg.as_ptr().add(k).cast(),
                        std::arch::x86_64::_MM_HINT_T0,
                    );
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = seg;
        }
    }
}

/// How many steps (input channels) ahead of its reads a product asks for its filter values
/// (5 KiB ahead, two steps to a cache line; 96 to 384 ran alike on 512x512@28).
#[cfg(target_arch = "x86_64")]
const PREFETCH_FILTER: usize = 160;

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
/// image), tiles `OUT` apart, in `v` as [`Layout`] says. Columns past a run's end may be
/// overwritten with garbage; a later run (processed after it) writes its own.
#[inline(always)]
fn transform_inputs<const IN: usize, const OUT: usize, const AVX512: bool>(
    x: Source<'_>,
    cols: usize,
    s: &Shape,
    runs: &[Run],
    v: &mut [f32],
    layout: Layout,
) {
    let (ld, vpos) = (layout.ldv, layout.vpos);
    let plane = s.h * s.w;
    let mut rows = [[0f32; ROW]; IN];
    let mut phases = [[[0f32; PHASE]; OUT]; IN];
    // Channel by channel, and in each the block's runs in turn: where a block spans several
    // tile rows (small outputs), their input rows follow one another in memory, one stream
    // instead of one short piece per channel.
    for c in 0..cols {
        for run in runs {
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
                if c + PREFETCH_CHANNELS < cols {
                    prefetch_rows::<IN>(x, run.n, c + PREFETCH_CHANNELS, cols, s, x0, y0, width);
                }
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
                                *b = stab.divide_f64(r, f64::from(z) + bias);
                            }
                        }
                    }
                    buf[hi..].fill(0.0);
                }
                #[cfg(target_arch = "x86_64")]
                if AVX512 {
                    for l0 in (0..len).step_by(LANES) {
                        let at = c * ld + run.at + start + l0;
                        assert!(v.len() >= (IN * IN - 1) * vpos + at + LANES);
                        // SAFETY: the caller runs this with AVX-512 only; the stores are in
                        // bounds (checked above).
                        unsafe { avx512::input_group::<IN, OUT>(&rows, l0, v, at, vpos) };
                    }
                    continue;
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
                            v[(i * IN + j) * vpos + at..][..LANES].copy_from_slice(lanes);
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
        e[i] = input_1d::<IN, _>(d);
    }
    let mut t = [[[0f32; LANES]; IN]; IN];
    for j in 0..IN {
        let col: [[f32; LANES]; IN] = std::array::from_fn(|i| e[i][j]);
        let v = input_1d::<IN, _>(col);
        for i in 0..IN {
            t[i][j] = v[i];
        }
    }
    t
}

/// Writes `y = Aᵀ M A` of every tile's products `M[p][o][tile]` (in `m` as [`Layout`] says,
/// with [`SLACK`] values after) to its `OUT`×`OUT` output pixels (those inside the output),
/// times their factors with `scale`.
///
/// # Safety
/// `dst` must point at an `[n, rows, oh, ow]` array that no one else reads or writes at the
/// runs' pixels during the call.
#[inline(always)]
unsafe fn transform_outputs<const IN: usize, const OUT: usize, const AVX512: bool>(
    m: &[f32],
    rows: usize,
    s: &Shape,
    runs: &[Run],
    layout: Layout,
    dst: SendPtr,
    scale: Option<Scale<'_>>,
) {
    let (tb, mpos) = (layout.tb, layout.mpos);
    let plane = s.oh * s.ow;
    // Output channel by output channel, the block's runs in turn (see `transform_inputs`).
    for o in 0..rows {
        for run in runs {
            for l0 in (0..run.len).step_by(LANES) {
                let len = (run.len - l0).min(LANES);
                let at = run.at + l0;
                #[cfg(target_arch = "x86_64")]
                if AVX512 {
                    let x0 = OUT * (run.tx + l0);
                    let width = (OUT * len).min(s.ow - x0);
                    let rows_out = (s.oh - OUT * run.ty).min(OUT);
                    let first = (run.n * rows + o) * plane + OUT * run.ty * s.ow + x0;
                    let factors = scale.map(|sc| {
                        let img = run.n / sc.maps;
                        &sc.x[(img * rows + o) * plane + OUT * run.ty * s.ow + x0..]
                    });
                    assert!(m.len() >= (IN * IN - 1) * mpos + o * tb + at + LANES);
                    assert!(factors.is_none_or(|f| f.len() >= (rows_out - 1) * s.ow + width));
                    // SAFETY: AVX-512 (the caller's promise); `m` and the factors are in
                    // bounds (checked above); the output rows `first + i·ow .. + width`, i <
                    // rows_out, lie inside the output and belong to this run's tiles.
                    unsafe {
                        avx512::output_group::<IN, OUT>(
                            m,
                            (o * tb + at, mpos),
                            dst.0.add(first),
                            (s.ow, rows_out, width),
                            factors,
                        )
                    };
                    continue;
                }
                let ins: [[&[f32; LANES]; IN]; IN] = std::array::from_fn(|i| {
                    std::array::from_fn(|j| {
                        m[(i * IN + j) * mpos + o * tb + at..][..LANES]
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
        let y = output_1d::<IN, OUT, _>(col);
        for a in 0..OUT {
            t[a][j] = y[a];
        }
    }
    let mut lines = [[0f32; 4 * LANES]; OUT];
    for (line, t) in lines.iter_mut().zip(&t) {
        let y = output_1d::<IN, OUT, _>(*t);
        for (l, group) in line[..OUT * LANES].chunks_exact_mut(OUT).enumerate() {
            for b in 0..OUT {
                group[b] = y[b][l];
            }
        }
    }
    lines
}

/// The transforms of one group of [`LANES`] tiles with AVX-512 instructions: the tiles'
/// columns are split from (and their outputs merged into) whole rows by permutations, and
/// every value stays in a register.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Arith, LANES, ROW, input_1d, output_1d};
    use std::arch::x86_64::*;

    impl Arith for __m512 {
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            // SAFETY: only reached from code compiled for AVX-512F (this module's functions).
            unsafe { _mm512_add_ps(self, o) }
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            // SAFETY: as above.
            unsafe { _mm512_sub_ps(self, o) }
        }
        #[inline(always)]
        fn scale(self, k: f32) -> Self {
            // SAFETY: as above.
            unsafe { _mm512_mul_ps(_mm512_set1_ps(k), self) }
        }
    }

    /// Lane indices of the two-register permutations (`_mm512_permutex2var_ps`: 0–15 the first
    /// register, 16–31 the second).
    const EVEN: [i32; 16] = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30];
    const ODD: [i32; 16] = [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31];
    /// Pairs 0–1 of every four values (2–3: add 2).
    const PAIRS: [i32; 16] = [0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29];
    /// Interleaves the first halves of two registers (the second halves: add 8).
    const ZIP: [i32; 16] = [0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23];
    /// Interleaves pairs of the first halves of two registers (the second halves: add 8).
    const ZIP2: [i32; 16] = [0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23];

    /// The indices `i` plus `plus`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn idx(i: [i32; 16], plus: i32) -> __m512i {
        // SAFETY: reads the sixteen values of `i`.
        let i = unsafe { _mm512_loadu_si512(i.as_ptr().cast()) };
        _mm512_add_epi32(i, _mm512_set1_epi32(plus))
    }

    /// `d[j]`, lane `l`: `row[OUT·(l0 + l) + j]`, for `j < IN`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn split<const IN: usize, const OUT: usize>(row: &[f32; ROW], l0: usize) -> [__m512; IN] {
        // Reads end at `OUT·l0 + 34` (F(2×2, 3×3)) or `OUT·l0 + 68` (F(4×4, 3×3)).
        assert!(OUT * (l0 + LANES) + 4 <= ROW);
        let p = row[OUT * l0..].as_ptr();
        // SAFETY: inside the row (asserted above).
        let ld = |k: usize| unsafe { _mm512_loadu_ps(p.add(k)) };
        let mut d = [_mm512_setzero_ps(); IN];
        let (even, odd) = (idx(EVEN, 0), idx(ODD, 0));
        if OUT == 2 {
            let (a, b, c, e) = (ld(0), ld(16), ld(2), ld(18));
            d[0] = _mm512_permutex2var_ps(a, even, b);
            d[1] = _mm512_permutex2var_ps(a, odd, b);
            d[2 % IN] = _mm512_permutex2var_ps(c, even, e);
            d[3 % IN] = _mm512_permutex2var_ps(c, odd, e);
        } else {
            let (p01, p23) = (idx(PAIRS, 0), idx(PAIRS, 2));
            // values 0–1 and 2–3 of every tile's four, then every other of those
            let quad = |k: usize, pairs: __m512i| {
                let lo = _mm512_permutex2var_ps(ld(k), pairs, ld(k + 16));
                let hi = _mm512_permutex2var_ps(ld(k + 32), pairs, ld(k + 48));
                (
                    _mm512_permutex2var_ps(lo, even, hi),
                    _mm512_permutex2var_ps(lo, odd, hi),
                )
            };
            (d[0], d[1]) = quad(0, p01);
            (d[2 % IN], d[3 % IN]) = quad(0, p23);
            (d[4 % IN], d[5 % IN]) = quad(4, p01);
        }
        d
    }

    /// The input transform of the [`LANES`] tiles from `l0` of a chunk whose `IN` input rows
    /// are `rows` (tile `l` reading columns `OUT·l ..`): position `p` of the transformed tiles
    /// goes to `v[at + p·stride ..][..LANES]`.
    ///
    /// # Safety
    /// AVX-512F; `v` must hold `at + (IN·IN − 1)·stride + LANES` values (asserted by the caller).
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) unsafe fn input_group<const IN: usize, const OUT: usize>(
        rows: &[[f32; ROW]; IN],
        l0: usize,
        v: &mut [f32],
        at: usize,
        stride: usize,
    ) {
        // along each row, then along the columns
        let e: [[__m512; IN]; IN] =
            std::array::from_fn(|i| input_1d::<IN, _>(split::<IN, OUT>(&rows[i], l0)));
        let out = v.as_mut_ptr();
        #[allow(clippy::needless_range_loop)] // column `j` of every row of `e`
        for j in 0..IN {
            let t = input_1d::<IN, _>(std::array::from_fn(|i| e[i][j]));
            for (i, t) in t.iter().enumerate() {
                // SAFETY: in bounds (the caller's promise).
                unsafe { _mm512_storeu_ps(out.add(at + (i * IN + j) * stride), *t) };
            }
        }
    }

    /// The output transform of one output channel's [`LANES`] tiles: position `p` of their
    /// products at `m[base + p·stride ..][..LANES]`, written to `rows` output rows of `width`
    /// pixels from `dst`, `ow` apart, each times its factor in `factors` (same offsets) if any.
    ///
    /// # Safety
    /// AVX-512F; `m` must hold `base + (IN·IN − 1)·stride + LANES` values, `factors` (if any)
    /// `(rows − 1)·ow + width`; the output rows must be writable and no one else's.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) unsafe fn output_group<const IN: usize, const OUT: usize>(
        m: &[f32],
        (base, stride): (usize, usize),
        dst: *mut f32,
        (ow, rows, width): (usize, usize, usize),
        factors: Option<&[f32]>,
    ) {
        let mp = m.as_ptr();
        // SAFETY: in bounds (the caller's promise).
        let ins: [[__m512; IN]; IN] = std::array::from_fn(|i| {
            std::array::from_fn(|j| unsafe {
                _mm512_loadu_ps(mp.add(base + (i * IN + j) * stride))
            })
        });
        // along the columns (combining rows i), then along each row
        let mut t = [[_mm512_setzero_ps(); IN]; OUT];
        for j in 0..IN {
            let y = output_1d::<IN, OUT, _>(std::array::from_fn(|i| ins[i][j]));
            for a in 0..OUT {
                t[a][j] = y[a];
            }
        }
        for (a, t) in t.iter().enumerate().take(rows) {
            let y = output_1d::<IN, OUT, _>(*t);
            // pixel OUT·l + b is y[b] lane l: merged into OUT registers of consecutive pixels
            let mut line = [_mm512_setzero_ps(); 4];
            if OUT == 2 {
                line[0] = _mm512_permutex2var_ps(y[0], idx(ZIP, 0), y[1 % OUT]);
                line[1] = _mm512_permutex2var_ps(y[0], idx(ZIP, 8), y[1 % OUT]);
            } else {
                let lo01 = _mm512_permutex2var_ps(y[0], idx(ZIP, 0), y[1 % OUT]);
                let hi01 = _mm512_permutex2var_ps(y[0], idx(ZIP, 8), y[1 % OUT]);
                let lo23 = _mm512_permutex2var_ps(y[2 % OUT], idx(ZIP, 0), y[3 % OUT]);
                let hi23 = _mm512_permutex2var_ps(y[2 % OUT], idx(ZIP, 8), y[3 % OUT]);
                line[0] = _mm512_permutex2var_ps(lo01, idx(ZIP2, 0), lo23);
                line[1] = _mm512_permutex2var_ps(lo01, idx(ZIP2, 8), lo23);
                line[2] = _mm512_permutex2var_ps(hi01, idx(ZIP2, 0), hi23);
                line[3] = _mm512_permutex2var_ps(hi01, idx(ZIP2, 8), hi23);
            }
            for (k, &val) in line.iter().enumerate().take(OUT) {
                let live = width.saturating_sub(k * LANES).min(LANES);
                if live == 0 {
                    break;
                }
                let mask: __mmask16 = if live == LANES { !0 } else { (1 << live) - 1 };
                let at = a * ow + k * LANES;
                // SAFETY: the `live` values from `at` lie in the output row and the factors
                // (the caller's promise); the masked lanes are neither read nor written.
                unsafe {
                    let val = match factors {
                        None => val,
                        Some(f) => {
                            _mm512_mul_ps(val, _mm512_maskz_loadu_ps(mask, f.as_ptr().add(at)))
                        }
                    };
                    _mm512_mask_storeu_ps(dst.add(at), mask, val);
                }
            }
        }
    }
}

/// Whether this processor runs the products with vector instructions (AVX2 and FMA, or
/// AVX-512); without them the direct convolutions are faster.
pub(crate) fn fast() -> bool {
    !matches!(Kernel::best(), Kernel::Portable)
}

/// The product kernels this processor runs (the direct transposes of `narrow` pick theirs by
/// the same instruction sets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl Kernel {
    /// Every kernel this processor can run, slowest first.
    pub(crate) fn available() -> Vec<Kernel> {
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
    pub(crate) fn best() -> Kernel {
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

/// `M[p] = U[p] · V[p]` over the block's first `nb` tiles, position after position, one
/// register block at a time by `block(k, a, b, ldb, c, ldc, n)` (`a`: `[k][MR]`, `b`: `k` rows
/// of `NR`, `ldb` apart; `c`: `MR` rows of `NR`, `ldc` apart), of which only the first `n`
/// columns (at most `NR`) are wanted: the last register block of a block whose tiles are not
/// a multiple of `NR` may compute fewer columns than `NR`.
#[inline(always)]
fn products_with(
    f: &Filter,
    v: &[f32],
    m: &mut [f32],
    layout: Layout,
    nb: usize,
    block: impl Fn(usize, &[f32], &[f32], usize, &mut [f32], usize, usize),
) {
    let Layout {
        tb,
        ldv,
        vpos,
        mpos,
    } = layout;
    let cols = f.cols;
    let padded_rows = f.row_blocks() * MR;
    let positions = f.tile.side() * f.tile.side();
    assert!(
        v.len() >= (positions - 1) * vpos + cols * ldv
            && m.len() >= (positions - 1) * mpos + padded_rows * tb
            && nb <= tb
            && tb <= ldv
    );
    assert!(tb.is_multiple_of(NR) && cols > 0);
    // Position by position: while one position's products run, only its share of the block's
    // transformed inputs (`cols` rows of the block's tiles) is read, again for every row block,
    // and stays in the core's second-level cache even where the whole block's would not
    // (wide layers, F(4×4, 3×3)'s 36 positions).
    for p in 0..positions {
        for rb in 0..f.row_blocks() {
            let a = f.panel(rb, p);
            let vp = &v[p * vpos..][..cols * ldv];
            let mp = &mut m[p * mpos + rb * MR * tb..][..MR * tb];
            for cb in (0..nb).step_by(NR) {
                block(
                    cols,
                    a,
                    &vp[cb..],
                    ldv,
                    &mut mp[cb..],
                    tb,
                    (nb - cb).min(NR),
                );
            }
        }
    }
}

/// Checks a register block's slices (see [`products_with`]).
#[inline(always)]
fn check_block(k: usize, a: &[f32], b: &[f32], ldb: usize, c: &[f32], ldc: usize) {
    assert!(a.len() >= k * MR && b.len() >= (k - 1) * ldb + NR && c.len() >= (MR - 1) * ldc + NR);
}

/// Asks the processor to fetch the filter values that a product reads [`PREFETCH_FILTER`] steps
/// after step `kk` of panel `a`, which may lie in the panels after it (the products take the
/// panels of a position one after another). A block reads the whole transformed filter once,
/// 37.7 MB for a 512 × 512 layer, from the shared cache or memory; without the hint the
/// products waited on it (512x512@28: 0.038 s without it and in the former layout, 0.027 s with
/// it and this one; docs/performance.md).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_panel(a: &[f32], kk: usize) {
    // SAFETY: a prefetch has no effect on memory and does not fault, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            a.as_ptr().wrapping_add((kk + PREFETCH_FILTER) * MR).cast(),
        )
    };
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block_avx512(block: Block<'_>) {
    let kernel =
        |k: usize, a: &[f32], b: &[f32], ldb: usize, c: &mut [f32], ldc: usize, n: usize| {
            check_block(k, a, b, ldb, c, ldc);
            // The fewest vectors of 16 columns that hold the `n` wanted: a block's last register
            // block, where its tiles are not a multiple of `NR`, costs a third or two thirds.
            // SAFETY: in bounds (checked above); the processor has AVX-512F.
            unsafe {
                match n.div_ceil(16) {
                    1 => register_block_avx512::<1>(k, a, b, ldb, c, ldc),
                    2 => register_block_avx512::<2>(k, a, b, ldb, c, ldc),
                    _ => register_block_avx512::<{ NR / 16 }>(k, a, b, ldb, c, ldc),
                }
            }
        };
    // SAFETY: the caller's promise; the processor has AVX-512F.
    unsafe { block.run::<true>(kernel) }
}

/// `c[0..MR][0..16·NV] = a · b` (see [`products_with`]) by AVX-512 vectors.
///
/// # Safety
/// The slices as [`check_block`] checks them (`NV ≤ NR / 16`); the processor has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn register_block_avx512<const NV: usize>(
    k: usize,
    a: &[f32],
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    for kk in 0..k {
        if kk % 2 == 0 {
            prefetch_panel(a, kk);
        }
        // SAFETY: in bounds (the caller's promise); unaligned loads.
        let bv: [__m512; NV] =
            std::array::from_fn(|j| unsafe { _mm512_loadu_ps(b.as_ptr().add(kk * ldb + 16 * j)) });
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: in bounds (the caller's promise).
            let ar = _mm512_set1_ps(unsafe { *a.get_unchecked(kk * MR + r) });
            for (a, &b) in acc.iter_mut().zip(&bv) {
                *a = _mm512_fmadd_ps(ar, b, *a);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (j, &v) in acc.iter().enumerate() {
            // SAFETY: in bounds (the caller's promise); unaligned stores.
            unsafe { _mm512_storeu_ps(c.as_mut_ptr().add(r * ldc + 16 * j), v) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(block: Block<'_>) {
    use std::arch::x86_64::*;
    let kernel =
        |k: usize, a: &[f32], b: &[f32], ldb: usize, c: &mut [f32], ldc: usize, n: usize| {
            check_block(k, a, b, ldb, c, ldc);
            // four rows by sixteen columns at a time: eight of the sixteen registers; the groups of
            // sixteen that hold the `n` wanted columns
            for r0 in (0..MR).step_by(4) {
                for c0 in (0..n).step_by(16) {
                    // (the first pass brings the panel into the cache for the others)
                    let fetch = r0 == 0 && c0 == 0;
                    let mut acc = [[_mm256_setzero_ps(); 2]; 4];
                    for kk in 0..k {
                        if fetch && kk % 2 == 0 {
                            prefetch_panel(a, kk);
                        }
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
    unsafe { block.run::<false>(kernel) }
}

unsafe fn block_portable(block: Block<'_>) {
    // (every column: the wanted `n` are a prefix)
    let kernel =
        |k: usize, a: &[f32], b: &[f32], ldb: usize, c: &mut [f32], ldc: usize, _n: usize| {
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
    unsafe { block.run::<false>(kernel) }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn the_wider_tile_where_it_saves_a_third() {
        // 14×14: F(2×2) 7·7 tiles of 16, F(4×4) 4·4 tiles of 36 (overhanging by 2)
        assert_eq!(Tile::F2.products(14, 14), 784);
        assert_eq!(Tile::F4.products(14, 14), 576);
        assert_eq!(Tile::widest_for(14, 14), Tile::F2);
        // 28×28: 3136 against 1764, 49 tiles of F(4×4)
        assert_eq!(Tile::F4.products(28, 28), 1764);
        assert_eq!(Tile::widest_for(28, 28), Tile::F4);
        assert_eq!(Tile::widest_for(224, 224), Tile::F4);
        // 7×7: both overhang by 1, 256 against 144, but only 4 tiles of F(4×4); 24×24: 36
        assert_eq!(Tile::F4.products(7, 7), 144);
        assert_eq!(Tile::widest_for(7, 7), Tile::F2);
        assert_eq!(Tile::widest_for(24, 24), Tile::F4);
        assert_eq!(Tile::widest_for(20, 20), Tile::F2);
        // 2 wide: F(4×4)'s tiles are half empty
        assert_eq!(Tile::widest_for(56, 2), Tile::F2);
    }

    /// Direct definition, in f64.
    pub(crate) fn direct(
        x: &[f32],
        w: &[f32],
        o: usize,
        c: usize,
        s: Shape,
        transpose: bool,
    ) -> Vec<f64> {
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

    pub(crate) fn values(len: usize, k: f32) -> Vec<f32> {
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

    /// Every transformed tap, read through `panel`, equals `G g Gᵀ` computed one filter at a
    /// time by the same formulas (bit for bit: the chunked, eight-lane fill only moves values),
    /// the lanes past the last row included (zero taps); columns not a multiple of the fill's
    /// chunk.
    #[test]
    fn filters_hold_each_tap_transformed() {
        let (o, c) = (11, FILTER_CHUNK + 5);
        let w: Vec<f32> = (0..o * c * 9)
            .map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0)
            .collect();
        for tile in [Tile::F2, Tile::F4] {
            let side = tile.side();
            for transpose in [false, true] {
                let f = Filter::new(&w, o, c, transpose, tile);
                let (rows, cols) = if transpose { (c, o) } else { (o, c) };
                for row in 0..f.row_blocks() * MR {
                    for k in 0..cols {
                        // (the lanes past the last row: the formulas on zero taps)
                        let g = |a: usize, b: usize| {
                            if row >= rows {
                                [0.0]
                            } else if transpose {
                                [w[(k * c + row) * 9 + (2 - a) * 3 + (2 - b)]]
                            } else {
                                [w[(row * c + k) * 9 + a * 3 + b]]
                            }
                        };
                        let mut cols_g = [[[0f32; 1]; 6]; 3];
                        for (b, out) in cols_g.iter_mut().enumerate() {
                            filter_1d(tile, [g(0, b), g(1, b), g(2, b)], out);
                        }
                        let mut want = [[[0f32; 1]; 6]; 6];
                        for (i, out) in want.iter_mut().enumerate().take(side) {
                            filter_1d(tile, [cols_g[0][i], cols_g[1][i], cols_g[2][i]], out);
                        }
                        for (i, want_row) in want.iter().enumerate().take(side) {
                            for (j, want) in want_row.iter().enumerate().take(side) {
                                let got = f.panel(row / MR, i * side + j)[k * MR + row % MR];
                                assert_eq!(
                                    got.to_bits(),
                                    want[0].to_bits(),
                                    "{tile:?} transpose {transpose}: row {row}, column {k}, \
                                     position ({i}, {j})"
                                );
                            }
                        }
                    }
                }
            }
        }
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
            (1, 8, 9, 5, 300, 1, 1, 1, 1),
        ] {
            for transpose in [false, true] {
                let (rows, cols) = if transpose { (c, o) } else { (o, c) };
                // the map's geometry; the transpose reads its output and writes its input
                let (oh, ow) = (h + top + bottom - 2, w + left + right - 2);
                let s = Shape::of_map(n, [h, w], [top, left], [oh, ow], transpose);
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
                    let mut by_kernel = Vec::new();
                    for &k in &kernels {
                        let mut out =
                            vec![std::mem::MaybeUninit::new(f32::NAN); n * rows * s.oh * s.ow];
                        let dst = SendPtr(out.as_mut_ptr() as *mut f32);
                        let total = n * th * tw;
                        let tb = NR;
                        let layout = Layout::new(tb, cols, f.row_blocks() * MR);
                        let (mut v, mut m) = layout.buffers(positions);
                        for b in 0..total.div_ceil(tb) {
                            let runs = runs(b * tb, ((b + 1) * tb).min(total), th, tw);
                            let block = Block {
                                x: Source::Plain(&x),
                                f: &f,
                                s,
                                runs: &runs,
                                v: &mut v,
                                m: &mut m,
                                layout,
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
                        by_kernel.push((k, got));
                    }
                    // The AVX-512 transforms run the generic ones' arithmetic in the same order,
                    // and both vector kernels sum their products by one FMA chain per output.
                    #[cfg(target_arch = "x86_64")]
                    if let (Some((_, a)), Some((_, b))) = (
                        by_kernel.iter().find(|(k, _)| matches!(k, Kernel::Avx512)),
                        by_kernel.iter().find(|(k, _)| matches!(k, Kernel::Avx2)),
                    ) {
                        assert!(
                            a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{tile:?} transpose {transpose} n{n} c{c} o{o} {h}x{w}: AVX-512 and AVX2 differ"
                        );
                    }
                    for ((g, w), b) in run(&x, &f, s).iter().zip(&want).zip(&bound) {
                        assert!((*g as f64 - w).abs() <= ulps * f32::EPSILON as f64 * b.max(1e-30));
                    }
                }
            }
        }
    }
}
