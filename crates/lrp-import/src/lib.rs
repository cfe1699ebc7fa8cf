//! Importers: model files into the lrp-graph IR.
//!
//! [`import_onnx`] reads an ONNX model (opsets 7–23, the operators listed in
//! [`onnx::SUPPORTED_OPS`]) into a validated [`lrp_ir::Graph`]; [`import_keras`] reads a Keras
//! `.keras` or whole-model `.h5` file (the layers in [`keras::SUPPORTED_LAYERS`]).

pub mod error;
pub mod keras;
pub mod onnx;

pub use error::ImportError;
pub use keras::import_keras;
pub use onnx::{Imported, import_onnx, import_onnx_model};
