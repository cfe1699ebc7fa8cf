//! Writes the benchmark's VGG16-shaped model (seeded random weights, 224×224, 1000 classes) and
//! a seeded N(0, 1) input batch, for timing the CLI as whole processes
//! (`benches/cli_cold.sh`).
//!
//! ```sh
//! cargo run --release --example bench_model -- OUT_DIR [BATCH]
//! ```
//!
//! Writes `OUT_DIR/vgg16.onnx` and `OUT_DIR/batch{BATCH}.npy` (`[BATCH, 3, 224, 224]`).

use lrp_testkit::{DEFAULT_SEED, VggConfig, random_normal};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = std::path::PathBuf::from(args.next().ok_or("usage: bench_model OUT_DIR [BATCH]")?);
    let batch: usize = args.next().map(|b| b.parse()).transpose()?.unwrap_or(8);
    std::fs::create_dir_all(&out)?;
    let model = VggConfig::new(1000, 224, DEFAULT_SEED).build();
    std::fs::write(out.join("vgg16.onnx"), lrp_onnx::encode_model(&model))?;
    let x = ndarray::ArrayD::from_shape_vec(
        ndarray::IxDyn(&[batch, 3, 224, 224]),
        random_normal(DEFAULT_SEED + 1, batch * 3 * 224 * 224, 1.0),
    )?;
    lrp_graph::io::write_npy(&out.join(format!("batch{batch}.npy")), &x)?;
    println!("wrote {}/vgg16.onnx and batch{batch}.npy", out.display());
    Ok(())
}
