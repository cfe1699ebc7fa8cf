//! Errors of reading inputs and writing outputs.

use std::path::PathBuf;

/// An error of reading a model input or writing an output. Every message is one line that
/// starts with the file at fault and says exactly what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IoError {
    /// The path does not exist.
    #[error("{}: no such file or directory", path.display())]
    NotFound {
        /// The missing path.
        path: PathBuf,
    },
    /// A file or directory exists but could not be read.
    #[error("{}: cannot read: {}", path.display(), one_line(source))]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The path is neither a `.npy` file, an image file nor a directory.
    #[error(
        "{}: not a supported input; give a .npy file, an image (.png, .jpg, .jpeg) or a directory of images",
        path.display()
    )]
    UnsupportedInput {
        /// The path.
        path: PathBuf,
    },
    /// The file does not start like a `.npy` file, or its header is malformed.
    #[error("{}: not a valid .npy file: {reason}", path.display())]
    NotNpy {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The `.npy` file ends before the data its header promises.
    #[error(
        "{}: file is truncated: the header (shape {shape:?}, {dtype}) promises {expected} bytes of data but only {actual} follow",
        path.display()
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// The shape the header declares.
        shape: Vec<usize>,
        /// The element type the header declares.
        dtype: String,
        /// Bytes of data the header promises.
        expected: u64,
        /// Bytes of data present.
        actual: u64,
    },
    /// The `.npy` file has bytes after the data its header promises.
    #[error(
        "{}: file has {extra} unexpected byte(s) after the data of shape {shape:?}; it may be corrupt",
        path.display()
    )]
    TrailingData {
        /// The file.
        path: PathBuf,
        /// The shape the header declares.
        shape: Vec<usize>,
        /// Bytes past the end of the data (at least this many).
        extra: u64,
    },
    /// The `.npy` element type is not float32 or float64.
    #[error("{}: dtype {dtype} is not supported; use float32 or float64", path.display())]
    Dtype {
        /// The file.
        path: PathBuf,
        /// The element type, as a numpy name where known (`int64`), else the raw descriptor.
        dtype: String,
    },
    /// The array's shape does not fit the model input.
    #[error(
        "{}: input has shape {shape:?}; the model takes {}{hint}",
        path.display(), expected_shape(expected, *layout)
    )]
    Shape {
        /// The file.
        path: PathBuf,
        /// The array's shape.
        shape: Vec<usize>,
        /// The model's per-sample input shape (without the batch axis).
        expected: Vec<usize>,
        /// The model's input layout.
        layout: lrp_ir::Layout,
        /// Empty, or `"; "` followed by a suggestion (a missing batch axis, the other layout).
        hint: String,
    },
    /// The array holds NaN or an infinity.
    #[error("{}: value at index {index:?} is {value}; inputs must be finite", path.display())]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// The first bad element, in C (row-major) order.
        index: Vec<usize>,
        /// `NaN`, `inf` or `-inf`.
        value: String,
    },
    /// A float64 value does not fit into float32.
    #[error(
        "{}: value at index {index:?} is {value:e}, outside the float32 range",
        path.display()
    )]
    OutOfRange {
        /// The file.
        path: PathBuf,
        /// The first bad element, in C (row-major) order.
        index: Vec<usize>,
        /// The value.
        value: f64,
    },
    /// An image file could not be decoded.
    #[error("{}: cannot decode image: {message}", path.display())]
    Decode {
        /// The image file.
        path: PathBuf,
        /// The decoder's message.
        message: String,
    },
    /// The model input is not an image input (or the preprocessing does not fit it), so an
    /// image cannot be turned into it.
    #[error("{}: cannot use an image as this model's input: {reason}", path.display())]
    NotImageInput {
        /// The image file or directory.
        path: PathBuf,
        /// Why not.
        reason: String,
    },
    /// A directory holds no image files.
    #[error("{}: directory contains no .png, .jpg or .jpeg images", path.display())]
    EmptyDir {
        /// The directory.
        path: PathBuf,
    },
    /// An output file could not be written; nothing is left at the path.
    #[error("{}: cannot write: {reason}", path.display())]
    Write {
        /// The output file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

impl IoError {
    /// The file or directory the error is about.
    pub fn path(&self) -> &std::path::Path {
        match self {
            IoError::NotFound { path }
            | IoError::Read { path, .. }
            | IoError::UnsupportedInput { path }
            | IoError::NotNpy { path, .. }
            | IoError::Truncated { path, .. }
            | IoError::TrailingData { path, .. }
            | IoError::Dtype { path, .. }
            | IoError::Shape { path, .. }
            | IoError::NonFinite { path, .. }
            | IoError::OutOfRange { path, .. }
            | IoError::Decode { path, .. }
            | IoError::NotImageInput { path, .. }
            | IoError::EmptyDir { path }
            | IoError::Write { path, .. } => path,
        }
    }

    /// Whether the error is the user's input being bad (exit code 2 in the CLI) rather than a
    /// failure to read or write (exit code 1).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, IoError::Read { .. } | IoError::Write { .. })
    }
}

/// `[N, 3, 32, 32] (NCHW)`; the layout is left out for non-image inputs.
fn expected_shape(expected: &[usize], layout: lrp_ir::Layout) -> String {
    let mut s = String::from("[N");
    for d in expected {
        s.push_str(&format!(", {d}"));
    }
    s.push(']');
    match layout {
        lrp_ir::Layout::NCHW => s.push_str(" (NCHW)"),
        lrp_ir::Layout::NHWC => s.push_str(" (NHWC)"),
        lrp_ir::Layout::Other => {}
    }
    s
}

/// Any message folded onto one line.
pub(crate) fn one_line(msg: impl std::fmt::Display) -> String {
    let s = msg.to_string();
    if s.contains(['\n', '\r']) {
        s.split(['\n', '\r'])
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .collect::<Vec<_>>()
            .join("; ")
    } else {
        s
    }
}

/// Result of this crate's functions.
pub type Result<T, E = IoError> = std::result::Result<T, E>;
