//! The numeric kernels of the relevance pass.
//!
//! [`kernels`] holds the f32 building blocks every rule is made of: the linear maps of Conv and
//! Dense layers and their transposes (im2col + GEMM), and the redistribution of relevance through
//! max, average and global pools. [`Stabilizer`] is the division stabiliser of the rules.

pub mod kernels;
mod stabilizer;

pub use kernels::{ConvGeometry, KernelError, PoolGeometry};
pub use stabilizer::Stabilizer;
