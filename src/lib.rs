//! lrp-graph: Layer-wise Relevance Propagation (SGLRP, LRP, CLRP and Zennit's composites) for
//! image classifiers converted into a declarative graph.
//!
//! This crate re-exports the stages: [`ir`] (the graph), [`import`] (ONNX → graph),
//! [`runtime`] (forward passes on ONNX Runtime), [`rules`] (rules, registry, signals, rule
//! configurations), [`kernels`], [`engine`] (the relevance pass), [`io`] (inputs and outputs)
//! and [`render`] (heatmaps).

pub use lrp_engine as engine;
pub use lrp_import as import;
pub use lrp_io as io;
pub use lrp_ir as ir;
pub use lrp_kernels as kernels;
pub use lrp_render as render;
pub use lrp_rules as rules;
pub use lrp_runtime as runtime;
