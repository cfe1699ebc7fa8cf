//! The `lrp-graph` command-line tool.

/// See [`lrp_graph::allocator`].
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    lrp_graph::allocator::keep_freed_memory();
    lrp_cli::main()
}
