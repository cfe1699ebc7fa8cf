//! Errors of parsing rendering options and of building images.

/// Why a rendering option could not be parsed or an image could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// A name (of a colormap, normalisation, reduction or filter) that is not known.
    #[error("unknown {kind} `{name}` (expected one of: {valid})")]
    UnknownName {
        /// What was being named, e.g. `colormap`.
        kind: &'static str,
        /// The name given.
        name: String,
        /// The valid names, comma-separated.
        valid: String,
    },
    /// A clipping percentile that is not a number in (0, 100].
    #[error("percentile `{0}` is not a number in (0, 100]")]
    InvalidPercentile(String),
    /// An overlay opacity that is not a number in [0, 1].
    #[error("alpha {0} is not a number in [0, 1]")]
    InvalidAlpha(f32),
    /// Pixel data whose length does not match the image size.
    #[error("{len} bytes are not a {width}×{height} RGB image ({expected} bytes)")]
    PixelCount {
        /// The image width.
        width: usize,
        /// The image height.
        height: usize,
        /// The number of bytes given.
        len: usize,
        /// The number of bytes needed (3 per pixel).
        expected: usize,
    },
    /// An image size whose pixel count does not fit in memory addresses.
    #[error("an image of {width}×{height} pixels is too large")]
    TooLarge {
        /// The requested width.
        width: usize,
        /// The requested height.
        height: usize,
    },
    /// A request to resize an image without pixels to a size with pixels.
    #[error("cannot resize an empty {width}×{height} image to {to_width}×{to_height}")]
    EmptyImage {
        /// The source width.
        width: usize,
        /// The source height.
        height: usize,
        /// The requested width.
        to_width: usize,
        /// The requested height.
        to_height: usize,
    },
    /// A grid of no tiles.
    #[error("a grid needs at least one tile")]
    EmptyGrid,
    /// A grid of zero columns.
    #[error("a grid needs at least one column")]
    ZeroColumns,
}

/// Builds [`RenderError::UnknownName`] from the list of valid names.
pub(crate) fn unknown_name(kind: &'static str, name: &str, valid: &[&str]) -> RenderError {
    RenderError::UnknownName {
        kind,
        name: name.to_string(),
        valid: valid.join(", "),
    }
}
