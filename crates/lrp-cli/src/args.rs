//! Command-line arguments (clap), per the CLI contract in DESIGN.md.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Layer-wise Relevance Propagation (SGLRP, LRP, CLRP) for image classifiers.
#[derive(Debug, Parser)]
#[command(name = "lrp-graph", version, about, long_about = None)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Convert an ONNX or Keras model into a graph (RON + safetensors sidecar).
    Convert(ConvertArgs),
    /// Describe a graph: input, output and every node with its shape.
    Inspect(InspectArgs),
    /// Run a graph on inputs and print the top classes.
    Predict(PredictArgs),
    /// Relevance maps (.npy), heatmaps (PNG) and a report (JSON) for inputs.
    Explain(Box<ExplainArgs>),
    /// List the registered rules with their parameters, and the methods (presets).
    Rules,
}

/// `convert` arguments.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The model file: .onnx, .keras, or .h5 (Keras 2 or 3, whole model).
    pub model: PathBuf,
    /// Output graph (.ron; the weights go beside it as .safetensors). Default: the model's path
    /// with the extension .ron.
    #[arg(short, long, value_name = "OUT.ron")]
    pub output: Option<PathBuf>,
    /// Image preprocessing to record in the graph: a mode (caffe, torch, tf, none) and/or
    /// scale=S,mean=M,std=D,order=RGB|BGR,resize=HxW,fit=stretch|shorter|crop,
    /// filter=bilinear|nearest (per-channel values separated by '/'), e.g. torch,fit=shorter.
    #[arg(long, value_name = "P")]
    pub preprocess: Option<String>,
    /// Class labels to record in the graph: a text file with one label per line, or `imagenet`
    /// for the bundled ImageNet-1k class names.
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// Name of the graph (default: the model file's stem).
    #[arg(long)]
    pub name: Option<String>,
    /// Skip the check that the converted graph reproduces the original model's outputs on
    /// ONNX Runtime.
    #[arg(long)]
    pub no_check: bool,
}

/// `inspect` arguments.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The graph (.ron).
    pub graph: PathBuf,
    /// Print the rule each node gets under this method (a preset name).
    #[arg(long, value_name = "M", conflicts_with = "rules")]
    pub method: Option<String>,
    /// Print the rule each node gets under this rule configuration (.ron).
    #[arg(long, value_name = "R.ron")]
    pub rules: Option<PathBuf>,
}

/// `explain` arguments.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The graph (.ron).
    pub graph: PathBuf,
    /// A .npy batch in the model's layout, an image file, or a folder of images (searched
    /// recursively; the outputs mirror its tree).
    #[arg(short, long, value_name = "INPUT")]
    pub input: PathBuf,
    /// The method: a preset name (see `lrp-graph rules`), or several separated by commas
    /// (each gets a sub-folder of the output folder).
    #[arg(
        short,
        long,
        value_name = "M",
        conflicts_with = "rules",
        default_value = "sglrp"
    )]
    pub method: String,
    /// A rule configuration file (.ron) instead of a preset.
    #[arg(long, value_name = "R.ron")]
    pub rules: Option<PathBuf>,
    /// Target class: `top` (each input's top class), a class index, or one index per input
    /// separated by commas.
    #[arg(short, long, value_name = "T", default_value = "top")]
    pub target: String,
    /// Lowest input value for bounded (z^B) rules: one number or one per channel separated by '/'.
    #[arg(long, value_name = "L", allow_hyphen_values = true)]
    pub low: Option<String>,
    /// Highest input value for bounded (z^B) rules: one number or one per channel separated by '/'.
    #[arg(long, value_name = "H", allow_hyphen_values = true)]
    pub high: Option<String>,
    /// Keep only positive relevance (max(map, 0)), as the seed's `relu=True`.
    #[arg(long)]
    pub relu: bool,
    /// Output folder.
    #[arg(short, long, value_name = "DIR", default_value = "lrp-out")]
    pub out: PathBuf,
    /// Override the image preprocessing recorded in the graph (same syntax as `convert`).
    #[arg(long, value_name = "P")]
    pub preprocess: Option<String>,
    /// Inputs per forward/relevance pass.
    #[arg(long, value_name = "B", default_value_t = 16)]
    pub batch_size: usize,
    /// Heatmap enlargement (nearest neighbour); 0: enough for the shorter side to reach 112 px.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub zoom: usize,
    /// Heatmap colormap: seismic, bwr, coldnhot, hot, gray, wred, wblue.
    #[arg(long, value_name = "NAME", default_value = "seismic")]
    pub cmap: lrp_render::Colormap,
    /// Heatmap normalisation: symmetric (±max|h|), absolute (|h|/max|h|), positive (h⁺/max h).
    #[arg(long, value_name = "N", default_value = "symmetric")]
    pub norm: lrp_render::Normalization,
    /// Scale heatmaps to this percentile of |h| instead of the maximum (e.g. 99.5); larger
    /// values saturate.
    #[arg(long, value_name = "P")]
    pub clip: Option<lrp_render::Percentile>,
    /// How a heatmap reduces the channels: sum, absmax (largest |h|), l2.
    #[arg(long, value_name = "R", default_value = "sum")]
    pub reduce: lrp_render::Reduction,
    /// Also write each heatmap blended over the grey-scaled input (NAME.overlay.png), with
    /// this weight of the heatmap (default 0.6).
    #[arg(long, value_name = "ALPHA", num_args = 0..=1, default_missing_value = "0.6")]
    pub overlay: Option<f32>,
    /// Also write a montage of each batch's heatmaps (overlays with --overlay) with captions
    /// (input, class and probability, method), COLS per row (default: about square), as
    /// grid-<index of the batch's first input>.png.
    #[arg(long, value_name = "COLS", num_args = 0..=1, default_missing_value = "0")]
    pub grid: Option<usize>,
    /// Also write OUT/index.html: each input with its heatmap(s) and classes, for a browser.
    #[arg(long)]
    pub html: bool,
    /// Folder input: skip inputs whose outputs exist and are recorded in the manifest.
    #[arg(long)]
    pub resume: bool,
    /// Folder input: process only shard K of N (0 ≤ K < N), a fixed share of the files chosen
    /// by their paths, so that N jobs split a folder without coordination.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<String>,
    /// Progress report on stderr: auto (a bar on a terminal, lines otherwise), bar, lines, none.
    #[arg(long, value_enum, default_value_t = ProgressArg::Auto)]
    pub progress: ProgressArg,
    /// Where the forward pass runs.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// Threads of the forward pass (ONNX Runtime intra-op) and of the relevance pass (default:
    /// all cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// How the relevance pass computes large 3×3, stride-1 convolutions: winograd4 (F(4×4, 3×3),
    /// 4× fewer products, on outputs from 23×23 up; F(2×2, 3×3) on smaller ones, where
    /// F(4×4, 3×3) was no faster), winograd (F(2×2, 3×3) everywhere,
    /// 2.25× fewer products, about a fifth of winograd4's rounding error) or direct (as
    /// every other convolution); results differ by rounding only.
    #[arg(long, value_enum, default_value_t = Conv3x3Arg::Winograd4)]
    pub conv3x3: Conv3x3Arg,
    /// Also write the relevance at the nodes whose names match this glob (`*`, `?`, `[...]`;
    /// repeatable) to `OUT/nodes/NAME.npy` (folder input: `OUT/nodes/NAME/<input>.npy`).
    #[arg(long, value_name = "GLOB")]
    pub keep: Vec<String>,
}

/// How progress is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressArg {
    /// A bar on a terminal, plain lines otherwise.
    Auto,
    /// A progress bar.
    Bar,
    /// A plain line per batch.
    Lines,
    /// Nothing.
    None,
}

/// How the relevance pass computes large 3×3, stride-1 convolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Conv3x3Arg {
    /// Winograd's minimal filtering F(2×2, 3×3).
    Winograd,
    /// Winograd's F(4×4, 3×3) on outputs from 23×23 up (F(2×2, 3×3) on smaller ones): 4×
    /// fewer products than a direct sum, several times the rounding error.
    Winograd4,
    /// Like every other convolution (also their transposes into a few channels, which the
    /// other two run by direct sums).
    Direct,
}

/// Where the forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// ONNX Runtime on the CPU.
    Cpu,
    /// ONNX Runtime's CUDA provider (builds with the `cuda` feature).
    Cuda,
}

impl From<Conv3x3Arg> for lrp_engine::Conv3x3 {
    fn from(c: Conv3x3Arg) -> Self {
        match c {
            Conv3x3Arg::Winograd => lrp_engine::Conv3x3::Winograd,
            Conv3x3Arg::Winograd4 => lrp_engine::Conv3x3::Winograd4,
            Conv3x3Arg::Direct => lrp_engine::Conv3x3::Direct,
        }
    }
}

impl From<DeviceArg> for lrp_runtime::Device {
    fn from(d: DeviceArg) -> Self {
        match d {
            DeviceArg::Cpu => lrp_runtime::Device::Cpu,
            DeviceArg::Cuda => lrp_runtime::Device::Cuda,
        }
    }
}

/// `predict` arguments.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// The graph (.ron).
    pub graph: PathBuf,
    /// A .npy batch in the model's layout, an image file, or a folder of images (searched
    /// recursively, read as one batch).
    #[arg(short, long, value_name = "INPUT")]
    pub input: PathBuf,
    /// How many classes to print per input.
    #[arg(long, default_value_t = 5, value_name = "K")]
    pub top: usize,
    /// Write the pre-softmax logits (f32, N × classes) to this .npy file.
    #[arg(long, value_name = "OUT.npy")]
    pub logits: Option<PathBuf>,
    /// Override the image preprocessing recorded in the graph (same syntax as `convert`).
    #[arg(long, value_name = "P")]
    pub preprocess: Option<String>,
    /// Where the forward pass runs.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// Threads of the forward pass (ONNX Runtime intra-op) and of the relevance pass (default:
    /// all cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}
