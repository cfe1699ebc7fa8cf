//! Forward passes of lrp-graph graphs on ONNX Runtime.
//!
//! The IR is exported back to an ONNX model ([`export::to_onnx`]; ONNX Runtime reads the
//! Dense weights in the graph's own memory, see [`Forward::new`]) in which the nodes' outputs
//! the caller selects ([`ExportOutputs`]) are also graph outputs, so that one ORT run returns
//! the activations the relevance pass needs ([`Forward::run`]). ONNX Runtime is loaded at run time from its shared library
//! ([`ort_library`]).

mod conv;
pub mod export;
mod gemm;
mod session;
mod small;

pub use conv::OrtConv;
pub use export::{ExportOutputs, to_onnx};
pub use gemm::OrtSgemm;
pub use session::{
    ActivationViews, Activations, Device, Forward, ORT_LIBRARY_FILE, RuntimeError, ort_library,
    run_onnx_bytes,
};
