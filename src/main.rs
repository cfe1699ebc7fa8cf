//! The `lrp-graph` command-line tool.

/// mimalloc keeps freed memory for reuse: the relevance pass allocates and frees arrays of
/// hundreds of MB per layer, and glibc would hand each back to the kernel and fault it in
/// again (page faults were a third of the explain time on VGG16).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` of mimalloc 2 (`mimalloc.h`): how long freed memory waits before it
/// is returned to the kernel; -1 keeps it for the (short) life of the process.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    // SAFETY: sets a plain integer option of the allocator; valid at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    lrp_cli::main()
}
