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

/// The memory allocator of the `lrp-graph` binary (and of the benchmarks that time it).
///
/// mimalloc keeps freed memory for reuse once [`keep_freed_memory`](allocator::keep_freed_memory)
/// is called: the relevance pass allocates and frees arrays of hundreds of MB per layer, and
/// glibc would hand each back to the kernel and fault it in again (page faults were a third of
/// the explain time on VGG16). A program opts in with
/// `#[global_allocator] static A: mimalloc::MiMalloc = mimalloc::MiMalloc;`.
pub mod allocator {
    /// `mi_option_purge_delay` of mimalloc 2 (`mimalloc.h`): how long freed memory waits before
    /// it is returned to the kernel.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

    /// Makes mimalloc keep freed memory for the rest of the process (purge delay −1). Has no
    /// effect on memory not allocated by mimalloc.
    pub fn keep_freed_memory() {
        // SAFETY: sets a plain integer option of the allocator; valid at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}
