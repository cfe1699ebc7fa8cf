//! Test support shared by the workspace's tests and benchmarks.
//!
//! - [`OnnxBuilder`]: a fluent builder of ONNX models with seeded He-initialised layer helpers,
//!   so tests never assemble protobufs by hand;
//! - [`vgg16`] and [`resnet18`] (and [`VggConfig`], [`ResNetConfig`] for narrow versions and
//!   weight-free parameter counts): torchvision's architectures with random weights whose
//!   activations stay O(1) through the depth;
//! - [`write_model`] and [`temp_model`]: put a model on disk.

#![warn(missing_docs)]

mod builder;
mod models;

use std::path::{Path, PathBuf};

pub use builder::{
    Attr, BATCH_DIM, BN_EPSILON, DEFAULT_SEED, OnnxBuilder, ParamCount, ir_version_for_opset,
    tensor_f32, tensor_f32_typed, tensor_i64, tensor_i64_typed,
};
pub use lrp_onnx::ModelProto;
pub use models::{
    MODEL_INPUT, MODEL_OPSET, MODEL_OUTPUT, RESNET_BRANCH_GAMMA, ResNetConfig, VggConfig, resnet18,
    vgg16,
};

use rand::SeedableRng;

/// Encodes `model` and writes it to `path`.
pub fn write_model(model: &ModelProto, path: &Path) -> std::io::Result<()> {
    std::fs::write(path, lrp_onnx::encode_model(model))
}

/// Writes `model` to `model.onnx` in a fresh temporary directory, returning the directory
/// (deleted when dropped; keep it alive while the file is used) and the file's path.
///
/// Panics if the directory or file cannot be created (a test helper).
pub fn temp_model(model: &ModelProto) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let path = dir.path().join("model.onnx");
    write_model(model, &path).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    (dir, path)
}

/// `len` seeded samples of a normal distribution with mean 0 and standard deviation `std`
/// (e.g. a test input image).
pub fn random_normal(seed: u64, len: usize, std: f32) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    builder::normal(&mut rng, len, f64::from(std))
}

/// `len` seeded samples uniform in `[lo, hi)`.
pub fn random_uniform(seed: u64, len: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    builder::uniform(&mut rng, len, lo, hi)
}

/// A seeded batch `[n, 3, hw, hw]` of RGB images as a torchvision classifier sees them:
/// pixels uniform in [1, 254], normalised as [`Preprocess::torch`] does; with the per-channel
/// box that normalisation maps pixels 0 and 255 to (the `low`/`high` bounds of the z^B rule),
/// as `(batch, low, high)`.
///
/// [`Preprocess::torch`]: lrp_ir::preprocess::Preprocess::torch
pub fn torch_image_batch(seed: u64, n: usize, hw: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let pre = lrp_ir::preprocess::Preprocess::torch();
    let plane = hw * hw;
    let mut x = random_uniform(seed, n * 3 * plane, 1.0, 254.0);
    for (i, v) in x.iter_mut().enumerate() {
        *v = pre.normalize(*v, (i / plane) % 3);
    }
    let low = (0..3).map(|c| pre.normalize(0.0, c)).collect();
    let high = (0..3).map(|c| pre.normalize(255.0, c)).collect();
    (x, low, high)
}

#[cfg(test)]
mod tests;
