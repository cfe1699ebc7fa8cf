//! Image files → input samples, and PNG output.

use std::path::Path;

use image::imageops::FilterType;
use image::{DynamicImage, GrayImage, ImageBuffer, Pixel, RgbImage};
use lrp_ir::preprocess::image_dims;
use lrp_ir::{ChannelOrder, Filter, Fit, InputDef, Layout, Preprocess};
use ndarray::{ArrayD, IxDyn};

use crate::error::{IoError, Result, one_line};
use crate::npy::read_error;

/// Largest image (in pixels) that inputs are resized to.
const MAX_PIXELS: u64 = 1 << 28;

/// Loads one image file as ONE input sample of shape `input.shape` (no batch axis), in the
/// input's layout: `[C, H, W]` for NCHW, `[H, W, C]` for NHWC.
///
/// The image is decoded (PNG or JPEG, found by content; 16-bit images are reduced to 8 bits and
/// alpha is dropped) and turned into grey (ITU-R BT.601 luma, `0.299 R + 0.587 G + 0.114 B`,
/// rounded, as PIL's `convert("L")`) for 1-channel inputs or RGB for 3-channel inputs. It is
/// then brought to the size `T` = `preprocess.resize` (height × width), or the input's size when
/// that is `None`, as `preprocess.fit` says: `Stretch` resizes to `T`, `Shorter` scales it
/// (aspect ratio kept) until it covers `T` and centre-crops, `Crop` centre-crops at the image's
/// own resolution. Resizes use `preprocess.filter` (bilinear: [`FilterType::Triangle`]); an image
/// that already has the size is not resampled. `T` is then centre-cropped to the input's
/// height × width (crop offsets rounded down). Channels are ordered per `preprocess.order` and
/// each value is `(pixel · scale − mean[c]) / std[c]`, `c` counting in the model's channel
/// order.
pub fn load_image(path: &Path, input: &InputDef, preprocess: &Preprocess) -> Result<ArrayD<f32>> {
    let (c, h, w) = check_image_input(path, input, preprocess)?;
    let (rh, rw) = preprocess.resize.map_or((h, w), |[rh, rw]| (rh, rw));
    let too_large = |what: String| IoError::NotImageInput {
        path: path.to_path_buf(),
        reason: format!("the {what} is too large"),
    };
    // Resampling allocates the whole target image: refuse absurd sizes rather than abort.
    let (rh32, rw32) = match (u32::try_from(rh), u32::try_from(rw)) {
        (Ok(a), Ok(b)) if (a as u64) * (b as u64) <= MAX_PIXELS => (a, b),
        _ => return Err(too_large(format!("target size {rh}x{rw}"))),
    };
    let img = decode(path)?;
    let (iw, ih) = (img.width(), img.height());
    // The size the image is resized to, and the offset of the T-sized window in it.
    let (sw, sh) = match preprocess.fit {
        Fit::Stretch => (rw32, rh32),
        Fit::Crop => {
            if iw < rw32 || ih < rh32 {
                return Err(IoError::NotImageInput {
                    path: path.to_path_buf(),
                    reason: format!(
                        "the image is {ih}x{iw} (height x width), smaller than the {rh}x{rw} that fit=crop cuts out; use fit=shorter or fit=stretch"
                    ),
                });
            }
            (iw, ih)
        }
        Fit::Shorter => {
            let k = (rw as f64 / iw as f64).max(rh as f64 / ih as f64);
            let sw = ((iw as f64 * k).round() as u64).max(rw as u64);
            let sh = ((ih as f64 * k).round() as u64).max(rh as u64);
            if sw * sh > MAX_PIXELS {
                return Err(too_large(format!("scaled image ({sh}x{sw})")));
            }
            (sw as u32, sh as u32)
        }
    };
    let (y0, x0) = (
        (sh as usize - rh) / 2 + (rh - h) / 2,
        (sw as usize - rw) / 2 + (rw - w) / 2,
    );
    let filter = match preprocess.filter {
        Filter::Bilinear => FilterType::Triangle,
        Filter::Nearest => FilterType::Nearest,
    };
    // c in the model's channel order.
    let norm = |p: u8, ch: usize| preprocess.normalize(f32::from(p), ch);
    let data = if c == 1 {
        let g = fit(to_grey(&img), sw, sh, filter);
        sample_values(h, w, 1, input.layout, |y, x, ch| {
            norm(g.get_pixel((x + x0) as u32, (y + y0) as u32)[0], ch)
        })
    } else {
        let rgb = fit(img.to_rgb8(), sw, sh, filter);
        let src = |ch: usize| match preprocess.order {
            ChannelOrder::RGB => ch,
            ChannelOrder::BGR => 2 - ch,
        };
        sample_values(h, w, 3, input.layout, |y, x, ch| {
            norm(rgb.get_pixel((x + x0) as u32, (y + y0) as u32)[src(ch)], ch)
        })
    };
    Ok(ArrayD::from_shape_vec(IxDyn(&input.shape), data).expect("shape of an image input"))
}

/// An image file as 8-bit RGB pixels (row-major, 3 bytes each) with its width and height, for
/// overlays and galleries.
pub fn load_rgb(path: &Path) -> Result<(Vec<u8>, usize, usize)> {
    let img = decode(path)?.to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    Ok((img.into_raw(), w, h))
}

/// Channels, height and width of `input`, once it and `preprocess` are known to fit images;
/// else an error naming `path` (the image or folder about to be read).
pub fn check_image_input(
    path: &Path,
    input: &InputDef,
    preprocess: &Preprocess,
) -> Result<(usize, usize, usize)> {
    let not_image = |reason: String| IoError::NotImageInput {
        path: path.to_path_buf(),
        reason,
    };
    let (c, h, w) = image_dims(input).map_err(not_image)?;
    if h == 0 || w == 0 {
        return Err(not_image(format!(
            "input '{}' has an empty height or width",
            input.name
        )));
    }
    preprocess.check_for(input).map_err(not_image)?;
    Ok((c, h, w))
}

/// The values of an `h × w × c` sample in the order of `layout`, from `value(y, x, ch)`.
fn sample_values(
    h: usize,
    w: usize,
    c: usize,
    layout: Layout,
    value: impl Fn(usize, usize, usize) -> f32,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(h * w * c);
    if layout == Layout::NHWC {
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    out.push(value(y, x, ch));
                }
            }
        }
    } else {
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    out.push(value(y, x, ch));
                }
            }
        }
    }
    out
}

/// `img` resized to `w × h` with `filter`, unless it already has that size.
fn fit<P>(
    img: ImageBuffer<P, Vec<u8>>,
    w: u32,
    h: u32,
    filter: FilterType,
) -> ImageBuffer<P, Vec<u8>>
where
    P: Pixel<Subpixel = u8> + 'static,
{
    if img.dimensions() == (w, h) {
        img
    } else {
        image::imageops::resize(&img, w, h, filter)
    }
}

/// Grey levels: grey images as they are (reduced to 8 bits, alpha dropped); colour images by
/// ITU-R BT.601 luma with rounding, in 16-bit fixed point (the weights sum to 65536).
fn to_grey(img: &DynamicImage) -> GrayImage {
    if !img.color().has_color() {
        return img.to_luma8();
    }
    let rgb: RgbImage = img.to_rgb8();
    GrayImage::from_fn(rgb.width(), rgb.height(), |x, y| {
        let [r, g, b] = rgb.get_pixel(x, y).0;
        let l = (19595 * r as u32 + 38470 * g as u32 + 7471 * b as u32 + 32768) >> 16;
        image::Luma([l as u8])
    })
}

/// Decodes an image file, the format found by content (then by extension).
fn decode(path: &Path) -> Result<DynamicImage> {
    let decode_err = |message: String| IoError::Decode {
        path: path.to_path_buf(),
        message,
    };
    let reader = image::ImageReader::open(path)
        .map_err(|e| read_error(path, e))?
        .with_guessed_format()
        .map_err(|e| read_error(path, e))?;
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            decode_err("the file is truncated".into())
        }
        image::ImageError::IoError(io) => read_error(path, io),
        other => decode_err(one_line(other)),
    })?;
    if img.width() == 0 || img.height() == 0 {
        return Err(decode_err("the image is empty (0 pixels)".into()));
    }
    Ok(img)
}

/// Writes an 8-bit RGB image (`pixels`: `width · height · 3` bytes, row by row) as a PNG file,
/// atomically: nothing is left at `path` on failure.
pub fn write_png_rgb(path: &Path, width: u32, height: u32, pixels: &[u8]) -> Result<()> {
    write_png(
        path,
        width,
        height,
        pixels,
        image::ExtendedColorType::Rgb8,
        3,
    )
}

/// Writes an 8-bit grey image (`pixels`: `width · height` bytes, row by row) as a PNG file,
/// atomically: nothing is left at `path` on failure.
pub fn write_png_gray(path: &Path, width: u32, height: u32, pixels: &[u8]) -> Result<()> {
    write_png(path, width, height, pixels, image::ExtendedColorType::L8, 1)
}

fn write_png(
    path: &Path,
    width: u32,
    height: u32,
    pixels: &[u8],
    color: image::ExtendedColorType,
    channels: u64,
) -> Result<()> {
    use image::ImageEncoder;
    let write_err = |reason: String| IoError::Write {
        path: path.to_path_buf(),
        reason,
    };
    let expected = width as u64 * height as u64 * channels;
    if pixels.len() as u64 != expected {
        return Err(write_err(format!(
            "a {width}x{height} image with {channels} channel(s) needs {expected} bytes, got {}",
            pixels.len()
        )));
    }
    if width == 0 || height == 0 {
        return Err(write_err(format!(
            "cannot encode an empty {width}x{height} image"
        )));
    }
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(pixels, width, height, color)
        .map_err(|e| write_err(format!("cannot encode PNG: {}", one_line(e))))?;
    crate::write_bytes(path, &png)
}
