//! Importers: model files into the lrp-graph IR.
//!
//! [`import_onnx`] reads an ONNX model (opsets 7–23, the operators listed in
//! [`onnx::SUPPORTED_OPS`]) into a validated [`lrp_ir::Graph`].

pub mod error;
pub mod onnx;

pub use error::ImportError;
pub use onnx::{Imported, import_onnx, import_onnx_model};
