//! The numeric kernels of the relevance pass.
//!
//! [`kernels`] holds the f32 building blocks every rule is made of: the linear maps of Conv and
//! Dense layers and their transposes (im2col + GEMM, or Winograd's algorithm for 3×3, stride-1
//! convolutions, and direct sums for their transposes into a few channels; large Dense
//! weights read once for a few rows), and the redistribution of relevance through max, average
//! and global pools. [`Stabilizer`] is the division stabiliser of the rules.

pub mod kernels;
mod narrow;
mod stabilizer;
mod stream;
mod winograd;

pub use kernels::{ConvGeometry, KernelError, PoolGeometry};
pub use stabilizer::Stabilizer;

/// Sizes the process-wide worker pool that runs these kernels (rayon's global pool) to
/// `threads` workers; by default it has one per core. Only the first call in a process, made
/// before any kernel ran, takes effect: returns whether this call did.
pub fn set_threads(threads: usize) -> bool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .is_ok()
}
