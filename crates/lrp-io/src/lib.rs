//! Model inputs in, arrays and images out, for lrp-graph.
//!
//! An input is a `.npy` file (float32 or float64, shaped `[N, ...]` like the model input with
//! the batch axis, in the model's own layout), an image file (`.png`, `.jpg`, `.jpeg`) or a
//! directory of images; [`load_input`] tells them apart. Outputs ([`write_npy`],
//! [`write_png_rgb`], [`write_png_gray`]) are written atomically: a reader never sees a
//! half-written file and a failed write leaves nothing behind.
//!
//! Every error ([`IoError`]) is one line that names the file and says what is wrong with it;
//! nothing panics on a user's file.

#![warn(missing_docs)]

mod error;
mod img;
mod npy;

use std::path::{Path, PathBuf};

use lrp_ir::{InputDef, Preprocess};
use ndarray::{ArrayD, Axis};

pub use error::{IoError, Result};
pub use img::{check_image_input, load_image, load_rgb, write_png_gray, write_png_rgb};
pub use npy::{read_npy, read_npy_input, write_npy_to};

/// Extensions of image files, lower case.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Loads a model input batch from `path` and returns it with the files it came from.
///
/// - a `.npy` file: [`read_npy_input`]; the sources are `[path]`.
/// - an image file (`.png`, `.jpg`, `.jpeg`, any case): [`load_image`], a batch of one.
/// - a directory: every image file directly in it ([`list_images`]), in file-name order,
///   stacked into one batch; the sources are the image files.
///
/// Images are preprocessed with `preprocess` if given, else with the preprocessing recorded in
/// `input`, else with [`Preprocess::none`] (raw 0–255 values, RGB).
pub fn load_input(
    path: &Path,
    input: &InputDef,
    preprocess: Option<&Preprocess>,
) -> Result<(ArrayD<f32>, Vec<PathBuf>)> {
    let meta = std::fs::metadata(path).map_err(|e| npy::read_error(path, e))?;
    let none = Preprocess::none();
    let pre = preprocess.or(input.preprocess.as_ref()).unwrap_or(&none);
    if meta.is_dir() {
        img::check_image_input(path, input, pre)?;
        let files = list_images(path)?;
        let samples = files
            .iter()
            .map(|f| load_image(f, input, pre))
            .collect::<Result<Vec<_>>>()?;
        let views: Vec<_> = samples.iter().map(|s| s.view()).collect();
        let batch = ndarray::stack(Axis(0), &views).expect("samples share the input shape");
        return Ok((batch, files));
    }
    match extension(path).as_deref() {
        Some("npy") => Ok((read_npy_input(path, input)?, vec![path.to_path_buf()])),
        Some(e) if IMAGE_EXTENSIONS.contains(&e) => {
            let sample = load_image(path, input, pre)?;
            Ok((sample.insert_axis(Axis(0)), vec![path.to_path_buf()]))
        }
        _ => Err(IoError::UnsupportedInput {
            path: path.to_path_buf(),
        }),
    }
}

/// The image files (`.png`, `.jpg`, `.jpeg`, any case) under `dir`, in its sub-folders too,
/// sorted by their path relative to `dir` (so the order is the same on every machine). Hidden
/// files and folders (names starting with `.`) are skipped, and symbolic links to folders are
/// not followed; no image at all is an error.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| npy::read_error(&d, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| npy::read_error(&d, e))?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let p = entry.path();
            let kind = entry.file_type().map_err(|e| npy::read_error(&p, e))?;
            if kind.is_dir() {
                pending.push(p);
            } else if extension(&p).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
                && p.is_file()
            {
                files.push(p);
            }
        }
    }
    if files.is_empty() {
        return Err(IoError::EmptyDir {
            path: dir.to_path_buf(),
        });
    }
    let rel = |p: &PathBuf| {
        p.strip_prefix(dir)
            .map(Path::to_path_buf)
            .unwrap_or_default()
    };
    files.sort_by_cached_key(rel);
    Ok(files)
}

/// The lower-case extension of `path`, if any.
fn extension(path: &Path) -> Option<String> {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
}

/// Writes `array` as a standard `.npy` file (float32, little-endian, C order) atomically:
/// nothing is left at `path` on failure.
pub fn write_npy(path: &Path, array: &ArrayD<f32>) -> Result<()> {
    lrp_ir::fsutil::write_atomic_with(path, |w| write_npy_to(w, array))
        .map_err(|e| write_error(path, e))
}

/// Writes `bytes` to `path` atomically.
pub(crate) fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    lrp_ir::fsutil::write_atomic(path, bytes).map_err(|e| write_error(path, e))
}

fn write_error(path: &Path, e: std::io::Error) -> IoError {
    IoError::Write {
        path: path.to_path_buf(),
        reason: error::one_line(e),
    }
}
