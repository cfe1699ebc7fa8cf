//! Writes the benchmark's VGG16-shaped model (seeded random weights, 224×224, 1000 classes) and
//! a seeded batch of images normalised as torchvision does
//! (`lrp_testkit::torch_image_batch`), for timing the CLI as whole processes
//! (`benches/cli_cold.sh`).
//!
//! ```sh
//! cargo run --release --example bench_model -- OUT_DIR [BATCH]
//! ```
//!
//! Writes `OUT_DIR/vgg16.onnx`, `OUT_DIR/batch{BATCH}.npy` (`[BATCH, 3, 224, 224]`) and
//! `OUT_DIR/bounds.txt`: the `--low` and `--high` arguments of the images' box, one per line.

use lrp_testkit::{DEFAULT_SEED, VggConfig, torch_image_batch};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = std::path::PathBuf::from(args.next().ok_or("usage: bench_model OUT_DIR [BATCH]")?);
    let batch: usize = args.next().map(|b| b.parse()).transpose()?.unwrap_or(8);
    std::fs::create_dir_all(&out)?;
    let model = VggConfig::new(1000, 224, DEFAULT_SEED).build();
    std::fs::write(out.join("vgg16.onnx"), lrp_onnx::encode_model(&model))?;
    let (x, low, high) = torch_image_batch(DEFAULT_SEED + 1, batch, 224);
    let x = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[batch, 3, 224, 224]), x)?;
    lrp_graph::io::write_npy(&out.join(format!("batch{batch}.npy")), &x)?;
    // Shortest round-trip decimals: the CLI parses back the same f32 bounds.
    let arg = |v: &[f32]| {
        v.iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join("/")
    };
    std::fs::write(
        out.join("bounds.txt"),
        format!("{}\n{}\n", arg(&low), arg(&high)),
    )?;
    println!(
        "wrote {}/vgg16.onnx, batch{batch}.npy and bounds.txt",
        out.display()
    );
    Ok(())
}
