//! Heatmaps of relevance maps, and images built from them.
//!
//! The pipeline of [`render`], each step also a public function:
//!
//! 1. **Channel reduction** ([`reduce_channels`], [`Reduction`]): a per-sample map `[C, H, W]`
//!    or `[H, W, C]` ([`ChannelAxis`]) becomes `[H, W]` by the channel sum (the default, as the
//!    SGLRP paper draws heatmaps), the largest magnitude `max_c |h_c|`, or the Euclidean norm.
//!    2-D maps pass through.
//! 2. **Normalisation** ([`normalize`], [`Normalization`], [`Percentile`]): values become
//!    positions in [0, 1], symmetrically around ½ for ±s (the default), as `|h| / s`, or as
//!    `max(h, 0) / s`. The scale `s` is the largest magnitude, or with a percentile clip that
//!    percentile of the magnitudes, so a few extreme pixels do not wash out the rest; values
//!    beyond it saturate. An all-zero map maps to the zero position; NaN counts as zero.
//! 3. **Colormap** ([`colorize`], [`Colormap`]): matplotlib's `seismic` (the default: blue
//!    negative, white 0, red positive), `bwr`, `hot` and `gray`, and Zennit's `coldnhot`, `wred`
//!    and `wblue`, as 8-bit RGB ([`Rgb`]).
//!
//! Around it: [`resize`] (nearest or bilinear, see [`Filter`]), [`grayscale`], [`overlay`] (the
//! heatmap alpha-blended over a greyscale photo) and [`grid`] (a montage of [`Tile`]s with
//! captions in an 8×8 bitmap font). Options parse from their lowercase names (`FromStr`, case-insensitive), and every
//! failure is a [`RenderError`].
//!
//! [`auto_zoom`] picks the integer factor that makes a small map at least 112 pixels on its
//! shorter side (enlarge with [`resize`] and [`Filter::Nearest`] to keep it crisp).
//!
//! ```
//! use lrp_render::{render, ChannelAxis, Colormap, RenderOptions};
//! use ndarray::array;
//!
//! let map = array![[[-1.0f32, 0.0], [0.5, 1.0]]].into_dyn(); // [C=1, H=2, W=2]
//! let opts = RenderOptions { colormap: "bwr".parse()?, ..RenderOptions::default() };
//! let img = render(map.view(), ChannelAxis::First, &opts);
//! assert_eq!((img.width(), img.height()), (2, 2));
//! assert_eq!(img.pixel(0, 0), Some(Colormap::Bwr.rgb(0.0)));
//! assert_eq!(img.pixel(1, 0), Some([255, 255, 255]));
//! # Ok::<(), lrp_render::RenderError>(())
//! ```

mod colormap;
mod error;
mod grid;
mod names;
mod normalize;
mod reduce;
mod rgb;

pub use colormap::Colormap;
pub use error::RenderError;
pub use grid::{GLYPH_SIZE, GRID_GAP, LINE_HEIGHT, Tile, grid};
pub use normalize::{Normalization, Percentile, normalize, scale};
pub use reduce::{Reduction, reduce_channels};
pub use rgb::{Filter, Rgb, grayscale, overlay, resize};

use ndarray::{ArrayView2, ArrayViewD};

/// How [`render`] turns a relevance map into a heatmap. The default is the SGLRP paper's: the
/// channel sum, scaled symmetrically to ±max|h|, in `seismic`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RenderOptions {
    /// The colormap.
    pub colormap: Colormap,
    /// How values become colormap positions.
    pub normalization: Normalization,
    /// The percentile of the magnitudes that sets the scale instead of the maximum.
    pub clip: Option<Percentile>,
    /// How channels become one value per pixel.
    pub reduction: Reduction,
}

/// The heatmap of a per-sample relevance map (`[C, H, W]` or `[H, W, C]` as `axis` says, or
/// `[H, W]`): its channels reduced, normalised and coloured as `opts` says; one pixel per map
/// position.
pub fn render(map: ArrayViewD<'_, f32>, axis: ChannelAxis, opts: &RenderOptions) -> Rgb {
    let h = reduce_channels(map, axis, opts.reduction);
    let t = normalize(h.view(), opts.normalization, opts.clip);
    colorize(t.view(), opts.colormap)
}

/// The image of colormap positions `t` (`[H, W]`, each in [0, 1], clamped) in `colormap`.
pub fn colorize(t: ArrayView2<'_, f32>, colormap: Colormap) -> Rgb {
    let (h, w) = t.dim();
    let pixels = t.iter().flat_map(|&v| colormap.rgb(v)).collect();
    // `t` holds h · w values of 4 bytes, so h · w · 3 bytes cannot overflow.
    Rgb::new(w, h, pixels).unwrap_or_default()
}

/// Where the channel axis of a per-sample map is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelAxis {
    /// `[C, H, W]`.
    First,
    /// `[H, W, C]`.
    Last,
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn seismic_reference_colours() {
        // matplotlib: seismic(0) = (0, 0, 0.3), seismic(0.5) ≈ white, seismic(1) = (0.5, 0, 0).
        let seismic = |t| Colormap::Seismic.rgb(t);
        assert_eq!(seismic(0.0), [0, 0, 77]);
        assert_eq!(seismic(0.25), [0, 0, 255]);
        assert_eq!(seismic(0.5), [255, 255, 255]);
        assert_eq!(seismic(0.75), [255, 0, 0]);
        assert_eq!(seismic(1.0), [128, 0, 0]);
        assert_eq!(seismic(0.625), [255, 128, 128]);
    }

    /// The default rendering is the seed's heatmap: channel sum, ±max|h|, seismic.
    #[test]
    fn symmetric_scaling() {
        let h = array![[-2.0f32, 0.0], [1.0, 2.0]].into_dyn();
        let img = render(h.view(), ChannelAxis::First, &RenderOptions::default());
        let px = img.pixels();
        assert_eq!(&px[0..3], &[0, 0, 77]);
        assert_eq!(&px[3..6], &[255, 255, 255]);
        assert_eq!(&px[9..12], &[128, 0, 0]);
        // All zero: white, no division by zero.
        let z = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[1, 1]));
        let img = render(z.view(), ChannelAxis::First, &RenderOptions::default());
        assert_eq!(img.pixels(), &[255, 255, 255]);
        // Channels are summed first: [C=2, H=1, W=2] with sums −2 and 2.
        let m = array![[[-1.0f32, 3.0]], [[-1.0, -1.0]]].into_dyn();
        let img = render(m.view(), ChannelAxis::First, &RenderOptions::default());
        assert_eq!(img.pixels(), &[0, 0, 77, 128, 0, 0]);
    }

    #[test]
    fn render_with_options() {
        // [H=1, W=3, C=2]: L2 over channels gives 5, 0, 10; absolute scale 10 → ½, 0, 1.
        let m = array![[[3.0f32, -4.0], [0.0, 0.0], [6.0, 8.0]]].into_dyn();
        let opts = RenderOptions {
            colormap: Colormap::Gray,
            normalization: Normalization::Absolute,
            clip: None,
            reduction: Reduction::L2,
        };
        let img = render(m.view(), ChannelAxis::Last, &opts);
        assert_eq!(img.pixels(), &[128, 128, 128, 0, 0, 0, 255, 255, 255]);
        // The 50th percentile of 0, 5, 10 is 5: 5 and 10 saturate.
        let clipped = RenderOptions {
            clip: Some(Percentile::new(50.0).unwrap()),
            ..opts
        };
        let img = render(m.view(), ChannelAxis::Last, &clipped);
        assert_eq!(img.pixels(), &[255, 255, 255, 0, 0, 0, 255, 255, 255]);
        // All zero: the zero colour everywhere.
        let z = ndarray::Array3::<f32>::zeros((1, 2, 2)).into_dyn();
        for &c in Colormap::ALL {
            for &n in Normalization::ALL {
                let o = RenderOptions {
                    colormap: c,
                    normalization: n,
                    ..RenderOptions::default()
                };
                let img = render(z.view(), ChannelAxis::First, &o);
                assert!(img.pixels().chunks(3).all(|p| p == c.rgb(n.zero())));
            }
        }
    }

    #[test]
    fn channel_sums() {
        let m =
            ndarray::Array3::from_shape_fn((2, 1, 2), |(c, _, w)| (c * 10 + w) as f32).into_dyn();
        assert_eq!(
            reduce_channels(m.view(), ChannelAxis::First, Reduction::Sum),
            array![[10.0, 12.0]]
        );
        assert_eq!(
            reduce_channels(m.view(), ChannelAxis::Last, Reduction::Sum),
            array![[1.0], [21.0]]
        );
    }
}

/// The zoom factor that makes the shorter side of an `h × w` map at least 112 pixels.
pub fn auto_zoom(h: usize, w: usize) -> usize {
    112usize.div_ceil(h.min(w).max(1)).max(1)
}

#[cfg(test)]
mod zoom_tests {
    use super::*;

    #[test]
    fn nearest_zoom() {
        // Enlarging by an integer factor with nearest sampling repeats each pixel.
        let img = Rgb::new(2, 1, vec![1, 2, 3, 4, 5, 6]).unwrap();
        let z = resize(&img, 4, 2, Filter::Nearest).unwrap();
        assert_eq!((z.width(), z.height()), (4, 2));
        assert_eq!(
            z.pixels(),
            [
                1, 2, 3, 1, 2, 3, 4, 5, 6, 4, 5, 6, 1, 2, 3, 1, 2, 3, 4, 5, 6, 4, 5, 6
            ]
        );
        // For every size and factor: each pixel repeated f × f times.
        for (w, h) in [(1, 1), (3, 2), (28, 56), (7, 13)] {
            let px: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
            let img = Rgb::new(w, h, px).unwrap();
            for f in 1..=6 {
                let z = resize(&img, w * f, h * f, Filter::Nearest).unwrap();
                for y in 0..h * f {
                    for x in 0..w * f {
                        assert_eq!(z.pixel(x, y), img.pixel(x / f, y / f), "{w}x{h} ×{f}");
                    }
                }
            }
        }
        assert_eq!(auto_zoom(28, 56), 4);
        assert_eq!(auto_zoom(224, 224), 1);
    }
}
