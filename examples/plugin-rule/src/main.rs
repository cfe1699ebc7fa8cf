//! `lrp-graph-plus`: the whole `lrp-graph` command line with GammaByDepth registered.

/// The allocator the `lrp-graph` binary uses (see `lrp_graph::allocator`).
#[global_allocator]
static ALLOC: lrp_graph::allocator::MiMalloc = lrp_graph::allocator::MiMalloc;

fn main() -> std::process::ExitCode {
    lrp_graph::allocator::keep_freed_memory();
    lrp_graph::cli::main_with(lrp_plugin_example::registry())
}
