//! lrp-graph: Layer-wise Relevance Propagation (SGLRP, LRP, CLRP and Zennit's composites) for
//! image classifiers converted into a declarative graph.
//!
//! This crate is the one a program depends on. It re-exports the stages — [`ir`] (the graph),
//! [`import`] (ONNX and Keras → graph), [`runtime`] (forward passes on ONNX Runtime), [`rules`]
//! (rules, registry, signals, rule configurations), [`kernels`], [`engine`] (the relevance
//! pass, [`engine::snapshot`] for snapshot tests), [`io`] (inputs and outputs), [`render`]
//! (heatmaps) and [`cli`] (the command line, for programs that add rules) — and names the
//! types of a typical session at its root.
//!
//! # Explaining a batch
//!
//! ```
//! # fn main() -> Result<(), lrp_graph::Error> {
//! use lrp_graph::{Device, ExplainOptions, Explainer, Registry, Targets};
//!
//! let root = env!("CARGO_MANIFEST_DIR");
//! // A model file (.onnx, .keras, .h5) …
//! let graph = lrp_graph::convert(format!("{root}/graphs/mnist/mnist_cnn.onnx"))?;
//! // … or a graph written by `lrp-graph convert`: lrp_graph::Graph::load("model.ron".as_ref())?
//!
//! let registry = Registry::with_builtins();
//! // A preset name (`lrp-graph rules` lists them) or a rule configuration file (.ron).
//! let config = lrp_graph::method("sglrp", &registry)?;
//! let mut explainer = Explainer::new(graph, config, &registry, Device::Cpu, None)?;
//!
//! // A .npy batch, an image, or a folder of images, preprocessed as the graph records.
//! let input = format!("{root}/graphs/mnist/examples/examples.npy");
//! let (batch, _files) = lrp_graph::io::load_input(input.as_ref(), explainer.graph().input(), None)?;
//!
//! let options = ExplainOptions {
//!     targets: Targets::Top,
//!     // Also return the relevance at these nodes (globs over the explained graph's names).
//!     keep: explainer.nodes_matching(&["/conv*/Conv"])?,
//!     ..Default::default()
//! };
//! let e = explainer.explain(&batch, &options)?;
//!
//! assert_eq!(e.relevance.shape(), batch.shape()); // the input relevance, one map per image
//! assert_eq!(e.targets.len(), batch.shape()[0]);  // the explained classes
//! for (node, r) in &e.kept {
//!     // [N·maps, ...node shape]: SGLRP has a target and a dual pass per image.
//!     assert_eq!(r.shape()[0], 2 * batch.shape()[0]);
//!     println!("{node}: {:?}", r.shape());
//! }
//! // Relevance sums per node, image and pass, and what the rules absorbed per image.
//! println!("{:?}", e.node_sums.first());
//! println!("{:?}", e.conservation_gap);
//! # Ok(())
//! # }
//! ```
//!
//! Own rules: implement [`rules::Rule`], add it to the [`Registry`] with
//! [`Registry::register`], and name it in a RON configuration; `examples/plugin-rule` is a
//! complete plugin crate and `docs/plugins.md` walks through writing one.

use std::path::Path;

pub use lrp_engine as engine;
pub use lrp_import as import;
pub use lrp_io as io;
pub use lrp_ir as ir;
pub use lrp_kernels as kernels;
pub use lrp_render as render;
pub use lrp_rules as rules;
pub use lrp_runtime as runtime;

pub use lrp_cli as cli;
pub use lrp_engine::{ExplainOptions, Explainer, Explanation, Targets};
pub use lrp_ir::Graph;
pub use lrp_rules::{NodeContext, Registry, Rule, RuleConfig};
pub use lrp_runtime::Device;

/// Any error of the library calls above, with the file, node or op it concerns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A model could not be imported.
    #[error(transparent)]
    Import(#[from] lrp_import::ImportError),
    /// A graph is not valid or could not be read or written.
    #[error(transparent)]
    Graph(#[from] lrp_ir::IrError),
    /// A rule configuration is not valid.
    #[error(transparent)]
    Config(#[from] lrp_rules::ConfigError),
    /// The explanation failed.
    #[error(transparent)]
    Explain(#[from] lrp_engine::ExplainError),
    /// An input or output file could not be read or written.
    #[error(transparent)]
    Io(#[from] lrp_io::IoError),
    /// A model file of an unknown kind, or an unknown method.
    #[error("{0}")]
    Usage(String),
}

/// Imports a model file — ONNX (`.onnx`), Keras 3 (`.keras`) or Keras 2/3 HDF5 (`.h5`) — as
/// a graph. The command line's `convert` does the same and also checks the graph against the
/// ONNX model on ONNX Runtime before writing it.
pub fn convert(model: impl AsRef<Path>) -> Result<Graph, Error> {
    let model = model.as_ref();
    let ext = model
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let imported = match ext.as_str() {
        "onnx" => lrp_import::import_onnx(model)?,
        "keras" | "h5" | "hdf5" => lrp_import::import_keras(model)?,
        _ => {
            return Err(Error::Usage(format!(
                "{}: unknown model format (expected a .onnx, .keras or .h5 file)",
                model.display()
            )));
        }
    };
    Ok(imported.graph)
}

/// A rule configuration: a preset's name (see [`rules::presets::names`]) or the path of a RON
/// rule configuration file (ending in `.ron`), read with the rules of `registry`.
pub fn method(name_or_file: &str, registry: &Registry) -> Result<RuleConfig, Error> {
    if name_or_file.ends_with(".ron") {
        return Ok(RuleConfig::load(Path::new(name_or_file), registry)?);
    }
    lrp_rules::presets::preset(name_or_file, registry).map_err(Error::Usage)
}

/// The memory allocator of the `lrp-graph` binary (and of the benchmarks that time it).
///
/// mimalloc keeps freed memory for reuse once [`keep_freed_memory`](allocator::keep_freed_memory)
/// is called: the relevance pass allocates and frees arrays of hundreds of MB per layer, and
/// glibc would hand each back to the kernel and fault it in again (page faults were a third of
/// the explain time on VGG16). A program opts in with
/// `#[global_allocator] static A: mimalloc::MiMalloc = mimalloc::MiMalloc;`. ONNX Runtime
/// allocates with it too (`lrp_runtime`'s sessions use the global allocator), and the command
/// line keeps short runs on 4 KiB pages (`lrp_cli`, docs/performance.md, ninth session).
pub mod allocator {
    pub use mimalloc::MiMalloc;

    /// `mi_option_purge_delay` of mimalloc (`mimalloc.h`, versions 2 and 3): how long freed
    /// memory waits before it is returned to the kernel.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

    /// Makes mimalloc keep freed memory for the rest of the process (purge delay −1). Has no
    /// effect on memory not allocated by mimalloc.
    pub fn keep_freed_memory() {
        // SAFETY: sets a plain integer option of the allocator; valid at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}
