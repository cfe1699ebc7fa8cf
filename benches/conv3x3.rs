//! The relevance pass's 3×3 convolutions one layer at a time: the map and its transpose for
//! every distinct 3×3 convolution of VGG16 at 224×224, by each way `lrp_kernels` computes
//! them (`Conv3x3`: direct, Winograd F(2×2, 3×3), Winograd F(4×4, 3×3)).
//!
//! ```sh
//! cargo bench --bench conv3x3                                   # 8 images, both threads
//! cargo bench --bench conv3x3 -- --images 1 --maps 2 --reps 20  # as sglrp's groups of one image
//! ```
//!
//! Options (argument after `--`, or environment variable):
//!
//! | argument | variable | default | meaning |
//! | --- | --- | --- | --- |
//! | `--images N` | `LRP_CONV_IMAGES` | 8 | images of the map |
//! | `--maps M` | `LRP_CONV_MAPS` | 1 | relevance maps per image of the transpose (sglrp: 2) |
//! | `--reps R` | `LRP_CONV_REPS` | 7 | timed runs per case (after one untimed) |
//! | `--threads T` | `LRP_CONV_THREADS` | all cores | workers of the kernels' pool |
//! | `--modes a,b` | `LRP_CONV_MODES` | `direct,winograd,winograd4` | `Conv3x3` values |
//! | `--layers a,b` | `LRP_CONV_LAYERS` | all | layers by name (`64x64@224`, …) |
//!
//! Every case prints the fastest and the median run. The direct mode here is im2col and a
//! matrix product (the crate's own code), not ONNX Runtime's kernels, which the engine plugs in
//! as its `Sconv`; `explain_vs_predict` measures the whole pass. Every run writes a fresh output
//! array; freed memory is kept for reuse, as the `lrp-graph` binary keeps it, so after the
//! untimed run no time goes to the system's first touch of new pages.
//!
//! Without `--bench` on the command line (`cargo test --benches`, `--all-targets`) the binary
//! only prints how to run it.

use std::time::Instant;

/// The allocator of the `lrp-graph` binary, with its settings (see `lrp_graph::allocator`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use lrp_graph::ir::Op;
use lrp_graph::kernels::kernels::{
    Backends, Conv3x3, conv2d_forward, conv2d_transpose, use_backends,
};
use lrp_graph::kernels::{ConvGeometry, set_threads};
use ndarray::{Array4, ArrayView4};

/// VGG16's distinct 3×3 convolutions: input channels, output channels, side.
const LAYERS: [(usize, usize, usize); 9] = [
    (3, 64, 224),
    (64, 64, 224),
    (64, 128, 112),
    (128, 128, 112),
    (128, 256, 56),
    (256, 256, 56),
    (256, 512, 28),
    (512, 512, 28),
    (512, 512, 14),
];

fn option(args: &[String], flag: &str, var: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var(var).ok())
}

fn parse<T: std::str::FromStr>(v: Option<String>, what: &str, default: T) -> T {
    match v {
        None => default,
        Some(s) => s.parse().unwrap_or_else(|_| {
            eprintln!("conv3x3 bench: bad {what} '{s}'");
            std::process::exit(2)
        }),
    }
}

/// Seeded values in [−1, 1) (the timing depends on their being finite and varied only).
fn array(shape: [usize; 4], seed: u64) -> Array4<f32> {
    let values = lrp_testkit::random_uniform(seed, shape.iter().product(), -1.0, 1.0);
    Array4::from_shape_vec(shape, values).expect("sized")
}

/// The fastest and the median of `reps` timed runs of `f`, after one untimed.
fn time<T>(reps: usize, mut f: impl FnMut() -> T) -> (f64, f64) {
    std::hint::black_box(f());
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            std::hint::black_box(f());
            t0.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    (t[0], t[t.len() / 2])
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("conv3x3: run with `cargo bench --bench conv3x3` (see the file's docs)");
        return;
    }
    lrp_graph::allocator::keep_freed_memory();
    let images = parse(
        option(&args, "--images", "LRP_CONV_IMAGES"),
        "images",
        8usize,
    );
    let maps = parse(option(&args, "--maps", "LRP_CONV_MAPS"), "maps", 1usize);
    let reps = parse(option(&args, "--reps", "LRP_CONV_REPS"), "reps", 7usize).max(1);
    if let Some(t) = option(&args, "--threads", "LRP_CONV_THREADS") {
        set_threads(parse(Some(t), "threads", 1usize));
    }
    let modes: Vec<Conv3x3> = option(&args, "--modes", "LRP_CONV_MODES")
        .unwrap_or_else(|| "direct,winograd,winograd4".into())
        .split(',')
        .map(|m| {
            serde_json::from_value(serde_json::Value::String(m.to_string())).unwrap_or_else(|_| {
                eprintln!("conv3x3 bench: unknown mode '{m}' (direct, winograd, winograd4)");
                std::process::exit(2)
            })
        })
        .collect();
    let only = option(&args, "--layers", "LRP_CONV_LAYERS")
        .map(|l| l.split(',').map(str::to_string).collect::<Vec<_>>());
    println!(
        "3x3 convolutions of VGG16, {images} image(s), transposes over {} rows, {} worker(s), fastest / median of {reps}",
        images * maps,
        rayon::current_num_threads()
    );
    println!();
    let mut header = "| layer | GMAC (map) |".to_string();
    let mut rule = "| --- | ---: |".to_string();
    for m in &modes {
        let name = serde_json::to_value(m).expect("serialises");
        let name = name.as_str().expect("a string");
        header += &format!(" {name} map s | {name} transpose s |");
        rule += " ---: | ---: |";
    }
    println!("{header}");
    println!("{rule}");
    for (c, o, side) in LAYERS {
        let name = format!("{c}x{o}@{side}");
        if only.as_ref().is_some_and(|l| !l.contains(&name)) {
            continue;
        }
        let op = Op::Conv {
            kernel: [3, 3],
            strides: [1, 1],
            pads: [1, 1, 1, 1],
            dilations: [1, 1],
            groups: 1,
        };
        let g = ConvGeometry::new(&op, &[c, side, side], &[o, c, 3, 3]).expect("a geometry");
        let x = array([images, c, side, side], 1);
        let w = array([o, c, 3, 3], 2);
        let s = array([images * maps, o, side, side], 3);
        let gmac = (images * o * side * side * c * 9) as f64 / 1e9;
        let mut line = format!("| {name} | {gmac:.2} |");
        for &mode in &modes {
            let _b = use_backends(Backends {
                conv3x3: mode,
                ..Backends::default()
            });
            let map = time(reps, || conv2d_forward(x.view(), w.view(), &g));
            let tr = time(reps, || {
                conv2d_transpose(s.view(), ArrayView4::from(&w), &g)
            });
            line += &format!(" {:.4} / {:.4} | {:.4} / {:.4} |", map.0, map.1, tr.0, tr.1);
        }
        println!("{line}");
    }
}
