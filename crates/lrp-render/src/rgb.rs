//! An 8-bit RGB image, resizing, greyscale conversion and heatmap overlays.

use crate::RenderError;
use crate::names::named_enum;

/// An 8-bit RGB image: `width × height` pixels, row-major, 3 bytes (R, G, B) each.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Rgb {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

/// `width · height · 3`, or an error when that overflows.
fn byte_len(width: usize, height: usize) -> Result<usize, RenderError> {
    width
        .checked_mul(height)
        .and_then(|n| n.checked_mul(3))
        .filter(|&n| n <= isize::MAX as usize)
        .ok_or(RenderError::TooLarge { width, height })
}

impl Rgb {
    /// The image of `width × height` pixels given as row-major RGB bytes; an error unless
    /// `pixels` has exactly `width · height · 3` bytes.
    pub fn new(width: usize, height: usize, pixels: Vec<u8>) -> Result<Self, RenderError> {
        let expected = byte_len(width, height)?;
        if pixels.len() != expected {
            return Err(RenderError::PixelCount {
                width,
                height,
                len: pixels.len(),
                expected,
            });
        }
        Ok(Rgb {
            width,
            height,
            pixels,
        })
    }

    /// A `width × height` image of one colour; an error when the size overflows.
    pub fn filled(width: usize, height: usize, colour: [u8; 3]) -> Result<Self, RenderError> {
        let n = byte_len(width, height)? / 3;
        Ok(Rgb {
            width,
            height,
            pixels: colour.repeat(n),
        })
    }

    /// The width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Whether the image has no pixels (a zero width or height).
    pub fn is_empty(&self) -> bool {
        self.pixels.is_empty()
    }

    /// The row-major RGB bytes, 3 per pixel.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// The row-major RGB bytes, 3 per pixel, by value.
    pub fn into_pixels(self) -> Vec<u8> {
        self.pixels
    }

    /// The colour at column `x`, row `y`, or `None` outside the image.
    pub fn pixel(&self, x: usize, y: usize) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let k = (y * self.width + x) * 3;
        Some([self.pixels[k], self.pixels[k + 1], self.pixels[k + 2]])
    }

    /// Sets the colour at column `x`, row `y`; does nothing outside the image.
    pub fn set_pixel(&mut self, x: usize, y: usize, colour: [u8; 3]) {
        if x < self.width && y < self.height {
            let k = (y * self.width + x) * 3;
            self.pixels[k..k + 3].copy_from_slice(&colour);
        }
    }

    /// Copies `src` into this image with its top-left corner at (`x`, `y`), clipped to this
    /// image.
    pub(crate) fn blit(&mut self, src: &Rgb, x: usize, y: usize) {
        if x >= self.width || y >= self.height {
            return;
        }
        let w = src.width.min(self.width - x);
        let h = src.height.min(self.height - y);
        for row in 0..h {
            let from = row * src.width * 3;
            let to = ((y + row) * self.width + x) * 3;
            self.pixels[to..to + w * 3].copy_from_slice(&src.pixels[from..from + w * 3]);
        }
    }
}

/// How [`resize`] samples the source image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Filter {
    /// The source pixel whose area holds the target pixel's centre: crisp, blocky.
    Nearest,
    /// Linear interpolation between pixel centres (edges clamped); when shrinking, a triangle
    /// filter as wide as the shrink factor, so every source pixel counts. The default.
    #[default]
    Bilinear,
}

named_enum!(Filter, "filter", {
    Nearest => "nearest",
    Bilinear => "bilinear",
});

/// `img` resized to `width × height` with `filter`. An error when the size overflows, or when
/// `img` has no pixels but the target does; a target with no pixels gives an empty image.
pub fn resize(img: &Rgb, width: usize, height: usize, filter: Filter) -> Result<Rgb, RenderError> {
    let len = byte_len(width, height)?;
    if len == 0 {
        return Rgb::new(width, height, Vec::new());
    }
    if img.is_empty() {
        return Err(RenderError::EmptyImage {
            width: img.width,
            height: img.height,
            to_width: width,
            to_height: height,
        });
    }
    if (width, height) == (img.width, img.height) {
        return Ok(img.clone());
    }
    let pixels = match filter {
        Filter::Nearest => {
            let xs: Vec<usize> = (0..width).map(|x| nearest(x, img.width, width)).collect();
            let mut out = Vec::with_capacity(len);
            for y in 0..height {
                let row = nearest(y, img.height, height) * img.width;
                for &x in &xs {
                    let k = (row + x) * 3;
                    out.extend_from_slice(&img.pixels[k..k + 3]);
                }
            }
            out
        }
        Filter::Bilinear => bilinear(img, width, height),
    };
    Rgb::new(width, height, pixels)
}

/// The source index (of `src`) whose cell holds the centre of target index `i` (of `dst`).
fn nearest(i: usize, src: usize, dst: usize) -> usize {
    let k = (2 * i as u128 + 1) * src as u128 / (2 * dst as u128);
    (k as usize).min(src - 1)
}

/// Per target index: the first source index and the normalised weights from there on.
fn triangle_weights(src: usize, dst: usize) -> Vec<(usize, Vec<f32>)> {
    let ratio = src as f64 / dst as f64;
    let support = ratio.max(1.0);
    (0..dst)
        .map(|o| {
            let centre = (o as f64 + 0.5) * ratio;
            let lo = ((centre - support).floor().max(0.0) as usize).min(src - 1);
            let hi = ((centre + support).ceil() as usize).clamp(lo + 1, src);
            let mut w: Vec<f64> = (lo..hi)
                .map(|i| (1.0 - ((i as f64 + 0.5 - centre) / support).abs()).max(0.0))
                .collect();
            let sum: f64 = w.iter().sum();
            if sum > 0.0 {
                w.iter_mut().for_each(|v| *v /= sum);
            } else {
                w = vec![0.0; hi - lo];
                w[0] = 1.0;
            }
            (lo, w.into_iter().map(|v| v as f32).collect())
        })
        .collect()
}

/// Separable triangle-filter resampling: rows first, then columns.
fn bilinear(img: &Rgb, width: usize, height: usize) -> Vec<u8> {
    let (sw, sh) = (img.width, img.height);
    let wx = triangle_weights(sw, width);
    let wy = triangle_weights(sh, height);
    let mut tmp = vec![0f32; sh * width * 3];
    for y in 0..sh {
        let src = &img.pixels[y * sw * 3..(y + 1) * sw * 3];
        for (x, (lo, ws)) in wx.iter().enumerate() {
            let mut acc = [0f32; 3];
            for (j, &w) in ws.iter().enumerate() {
                let k = (lo + j) * 3;
                for c in 0..3 {
                    acc[c] += w * f32::from(src[k + c]);
                }
            }
            tmp[(y * width + x) * 3..][..3].copy_from_slice(&acc);
        }
    }
    let mut out = vec![0u8; height * width * 3];
    for (y, (lo, ws)) in wy.iter().enumerate() {
        for x in 0..width {
            let mut acc = [0f32; 3];
            for (j, &w) in ws.iter().enumerate() {
                let k = ((lo + j) * width + x) * 3;
                for c in 0..3 {
                    acc[c] += w * tmp[k + c];
                }
            }
            for c in 0..3 {
                out[(y * width + x) * 3 + c] = to_byte(acc[c]);
            }
        }
    }
    out
}

fn to_byte(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// The ITU-R BT.601 luma of an RGB colour, `0.299 R + 0.587 G + 0.114 B`, unrounded.
fn luma(p: &[u8]) -> f32 {
    0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2])
}

/// `img` in grey: every pixel's ITU-R BT.601 luma (rounded) in all three channels.
pub fn grayscale(img: &Rgb) -> Rgb {
    Rgb {
        width: img.width,
        height: img.height,
        pixels: img
            .pixels
            .chunks_exact(3)
            .flat_map(|p| [to_byte(luma(p)); 3])
            .collect(),
    }
}

/// `heat` drawn over `image` with opacity `alpha`: `image` in grey (ITU-R BT.601 luma),
/// bilinearly resized to `heat`'s size if it differs, then per channel
/// `alpha · heat + (1 − alpha) · grey`. An error when `alpha` is not in [0, 1] or `image`
/// has no pixels while `heat` has.
pub fn overlay(heat: &Rgb, image: &Rgb, alpha: f32) -> Result<Rgb, RenderError> {
    if !(0.0..=1.0).contains(&alpha) {
        return Err(RenderError::InvalidAlpha(alpha));
    }
    let image = resize(image, heat.width, heat.height, Filter::Bilinear)?;
    let pixels = heat
        .pixels
        .chunks_exact(3)
        .zip(image.pixels.chunks_exact(3))
        .flat_map(|(h, i)| {
            let g = luma(i);
            [0, 1, 2].map(|c| to_byte(alpha * f32::from(h[c]) + (1.0 - alpha) * g))
        })
        .collect();
    Rgb::new(heat.width, heat.height, pixels)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2×2 grey image with values 0, 100 (top row) and 200, 255 (bottom row).
    fn two_by_two() -> Rgb {
        let v = [0u8, 100, 200, 255];
        Rgb::new(2, 2, v.iter().flat_map(|&g| [g; 3]).collect()).unwrap()
    }

    /// The first channel of every pixel, row by row.
    fn red(img: &Rgb) -> Vec<Vec<u8>> {
        (0..img.height())
            .map(|y| {
                (0..img.width())
                    .map(|x| img.pixel(x, y).unwrap()[0])
                    .collect()
            })
            .collect()
    }

    #[test]
    fn construction_checks_sizes() {
        assert!(matches!(
            Rgb::new(2, 2, vec![0; 11]),
            Err(RenderError::PixelCount { expected: 12, .. })
        ));
        assert!(matches!(
            Rgb::filled(usize::MAX, 2, [0; 3]),
            Err(RenderError::TooLarge { .. })
        ));
        let mut img = Rgb::filled(2, 1, [1, 2, 3]).unwrap();
        img.set_pixel(1, 0, [9, 9, 9]);
        img.set_pixel(5, 5, [9, 9, 9]);
        assert_eq!(img.pixels(), &[1, 2, 3, 9, 9, 9]);
        assert_eq!(img.pixel(2, 0), None);
    }

    #[test]
    fn nearest_resize_by_hand() {
        let up = resize(&two_by_two(), 4, 4, Filter::Nearest).unwrap();
        assert_eq!(
            red(&up),
            [
                [0, 0, 100, 100],
                [0, 0, 100, 100],
                [200, 200, 255, 255],
                [200, 200, 255, 255]
            ]
        );
        // Target centres 1/3, 1, 5/3 of a source pixel fall in source pixels 0, 1, 1.
        let three = resize(&two_by_two(), 3, 1, Filter::Nearest).unwrap();
        assert_eq!(red(&three), [[200, 255, 255]]);
        let one = resize(&two_by_two(), 1, 1, Filter::Nearest).unwrap();
        assert_eq!(red(&one), [[255]]);
    }

    #[test]
    fn bilinear_resize_by_hand() {
        // Target pixel centres of a 2 → 4 enlargement sit at source positions −¼, ¼, ¾, 1¼
        // (in pixel-centre units): edge, ¾·a + ¼·b, ¼·a + ¾·b, edge. Top row 0, 25, 75, 100;
        // bottom row 200, 213.75, 241.25, 255; the middle rows mix them ¾/¼ and ¼/¾.
        let up = resize(&two_by_two(), 4, 4, Filter::Bilinear).unwrap();
        assert_eq!(
            red(&up),
            [
                [0, 25, 75, 100],
                [50, 72, 117, 139],
                [150, 167, 200, 216],
                [200, 214, 241, 255]
            ]
        );
        // Shrinking to 1×1 averages all four: 555 / 4 = 138.75.
        let one = resize(&two_by_two(), 1, 1, Filter::Bilinear).unwrap();
        assert_eq!(red(&one), [[139]]);
    }

    #[test]
    fn resize_edge_cases() {
        let img = two_by_two();
        assert_eq!(resize(&img, 2, 2, Filter::Bilinear).unwrap(), img);
        let empty = resize(&img, 0, 5, Filter::Nearest).unwrap();
        assert_eq!(
            (empty.width(), empty.height(), empty.is_empty()),
            (0, 5, true)
        );
        assert!(matches!(
            resize(&Rgb::default(), 3, 3, Filter::Bilinear),
            Err(RenderError::EmptyImage { .. })
        ));
        assert!(matches!(
            resize(&img, usize::MAX, 3, Filter::Bilinear),
            Err(RenderError::TooLarge { .. })
        ));
        // A large shrink keeps the mean of a constant image.
        let flat = Rgb::filled(37, 5, [10, 20, 30]).unwrap();
        let small = resize(&flat, 3, 2, Filter::Bilinear).unwrap();
        assert!(small.pixels().chunks(3).all(|p| p == [10, 20, 30]));
    }

    #[test]
    fn overlay_one_pixel_by_hand() {
        let heat = Rgb::new(1, 1, vec![255, 0, 0]).unwrap();
        let image = Rgb::new(1, 1, vec![100, 150, 200]).unwrap();
        // grey = 0.299·100 + 0.587·150 + 0.114·200 = 140.75;
        // 0.6·255 + 0.4·140.75 = 209.3, 0.6·0 + 0.4·140.75 = 56.3.
        let out = overlay(&heat, &image, 0.6).unwrap();
        assert_eq!(out.pixels(), &[209, 56, 56]);
        assert_eq!(overlay(&heat, &image, 1.0).unwrap(), heat);
        assert_eq!(overlay(&heat, &image, 0.0).unwrap().pixels(), &[141; 3]);
        assert_eq!(grayscale(&image).pixels(), &[141; 3]);
        for bad in [-0.1, 1.5, f32::NAN] {
            assert!(matches!(
                overlay(&heat, &image, bad),
                Err(RenderError::InvalidAlpha(_))
            ));
        }
    }

    #[test]
    fn overlay_resizes_the_image() {
        let heat = Rgb::filled(4, 4, [0, 0, 0]).unwrap();
        // alpha 0: the output is the grey image, enlarged bilinearly.
        let out = overlay(&heat, &two_by_two(), 0.0).unwrap();
        assert_eq!(out, resize(&two_by_two(), 4, 4, Filter::Bilinear).unwrap());
        assert!(overlay(&heat, &Rgb::default(), 0.5).is_err());
        assert_eq!(
            overlay(&Rgb::default(), &Rgb::default(), 0.5).unwrap(),
            Rgb::default()
        );
    }
}
