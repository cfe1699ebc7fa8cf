//! Explain vs predict time on a VGG16-shaped graph with seeded random weights.
//!
//! For every input size and method it times, in process and warm:
//!
//! - predict: `Forward::new(graph, Cpu, ExportOutputs::Final)` then `run` on the batch (only
//!   `run` is timed);
//! - explain: `Explainer::new(graph, preset)` then `explain(batch, options)` (only `explain`
//!   is timed), with the Explanation's own forward / relevance split; the options give the
//!   input's box as the z^B bounds;
//!
//! on a seeded batch of images normalised as torchvision does
//! (`lrp_testkit::torch_image_batch`), and prints a markdown table with the medians, their
//! ratio and the peak RSS of each configuration.
//!
//! ```sh
//! cargo bench --bench explain_vs_predict                      # VGG16, batch 1 and 8 at 224
//! LRP_BENCH_QUICK=1 cargo bench --bench explain_vs_predict    # width/4 at 64x64 (smoke run)
//! cargo bench --bench explain_vs_predict -- --sizes 1,8 --reps 2 --methods sglrp,sglrp-seq-b+f32den
//! ```
//!
//! Options (argument after `--`, or environment variable):
//!
//! | argument | variable | default | meaning |
//! | --- | --- | --- | --- |
//! | `--quick` | `LRP_BENCH_QUICK=1` | off | width_div 4, classifier width 1024, 64x64 |
//! | `--sizes 1,8x224` | `LRP_BENCH_SIZES` | `1,8` | batches, each `N` or `NxHW` |
//! | `--reps R` | `LRP_BENCH_REPS` | 3 | timed explain runs per configuration (median); predict runs max(R, 10) |
//! | `--warmup W` | `LRP_BENCH_WARMUP` | 1 | untimed runs first (predict: at least 2) |
//! | `--methods a,b` | `LRP_BENCH_METHODS` | `lrp-epsilon,sglrp,sglrp-seq-b` | methods (below) |
//! | `--threads 16,4,1` | `LRP_BENCH_THREADS` | all cores | thread counts, each timed in turn: ONNX Runtime intra-op threads and relevance-pass workers |
//! | `--width-div D` | `LRP_BENCH_WIDTH_DIV` | 1 (4 quick) | VGG channel divisor |
//! | `--seed S` | `LRP_BENCH_SEED` | testkit's DEFAULT_SEED | weights; input uses S+1 |
//! | `--model M` | `LRP_BENCH_MODEL` | `vgg16` | `vgg16` or `resnet50` (torchvision's architectures) |
//! | `--group-mib G` | `LRP_BENCH_GROUP_MIB` | the engine's (32) | `ExplainOptions::group_bytes` in MiB (per relevance map); `max`: the whole batch at once |
//! | `--conv3x3 C` | `LRP_BENCH_CONV3X3` | the engine's (`winograd4`) | `ExplainOptions::conv3x3`: `winograd`, `winograd4` or `direct` |
//!
//! A method is a preset name, a rule configuration file (`path/to/config.ron`), or
//! `NAME+f32den`: preset NAME with every recomputed-denominator rule (AlphaBeta, ZPlus, ZBox,
//! Flat, WSquare, Gamma) replaced by the same `BasicRule` with `f64_denominators: false`,
//! registered here as `<Rule>F32Den`; it measures what the f64 denominators cost.
//!
//! With `LRP_BENCH_PROFILE=1` every explain run also prints its twelve slowest nodes and the
//! time of all nodes together (`LRP_BENCH_PROFILE=all`: every node).
//!
//! Besides the timings, the table gives the CPU time (user / system) and minor page faults per
//! explain run (from /proc/self/stat) and the 1/5/15-minute load average, since other work on
//! the machine skews wall-clock numbers. Results and observations: `docs/performance.md`.
//!
//! Without `--bench` on the command line (`cargo test --benches`, `--all-targets`) the binary
//! only prints how to run it: the full benchmark takes many minutes.

use std::sync::Arc;
use std::time::Instant;

/// The allocator of the `lrp-graph` binary, with its settings (see `lrp_graph::allocator`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use lrp_graph::engine::{Conv3x3, ExplainOptions, Explainer};
use lrp_graph::kernels::Stabilizer;
use lrp_graph::rules::basic::BasicRule;
use lrp_graph::rules::{BiasMode, Bounds, ParamDecl, Params, Registry, Rule, RuleConfig};
use lrp_graph::runtime::{Device, ExportOutputs, Forward};
use ndarray::{ArrayD, IxDyn};

const DEFAULT_METHODS: &str = "lrp-epsilon,sglrp,sglrp-seq-b";
const F32_SUFFIX: &str = "+f32den";

#[derive(Debug, Clone)]
struct Options {
    quick: bool,
    sizes: Vec<(usize, usize)>,
    reps: usize,
    warmup: usize,
    methods: Vec<String>,
    /// Thread counts to time in turn; `None`: ONNX Runtime's and rayon's defaults (all cores).
    threads: Vec<Option<usize>>,
    width_div: usize,
    seed: u64,
    model: Model,
    /// `ExplainOptions::group_bytes`; None: the engine's default.
    group_bytes: Option<usize>,
    /// `ExplainOptions::conv3x3`; None: the engine's default.
    conv3x3: Option<Conv3x3>,
}

/// The benchmark's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Model {
    /// torchvision's VGG16.
    Vgg16,
    /// torchvision's ResNet-50.
    ResNet50,
}

impl Model {
    fn name(self) -> &'static str {
        match self {
            Model::Vgg16 => "VGG16",
            Model::ResNet50 => "ResNet-50",
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn parse_num<T: std::str::FromStr>(what: &str, v: &str) -> T {
    v.trim()
        .parse()
        .unwrap_or_else(|_| fail(&format!("{what}: '{v}' is not a valid number")))
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(2);
}

fn parse_options(args: &[String]) -> Options {
    let mut quick = env("LRP_BENCH_QUICK").is_some_and(|v| v != "0");
    let mut sizes = env("LRP_BENCH_SIZES");
    let mut reps = env("LRP_BENCH_REPS");
    let mut warmup = env("LRP_BENCH_WARMUP");
    let mut methods = env("LRP_BENCH_METHODS");
    let mut threads = env("LRP_BENCH_THREADS");
    let mut width_div = env("LRP_BENCH_WIDTH_DIV");
    let mut seed = env("LRP_BENCH_SEED");
    let mut model = env("LRP_BENCH_MODEL");
    let mut group_mib = env("LRP_BENCH_GROUP_MIB");
    let mut conv3x3 = env("LRP_BENCH_CONV3X3");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |slot: &mut Option<String>| {
            *slot = Some(
                it.next()
                    .unwrap_or_else(|| fail(&format!("{a} needs a value")))
                    .clone(),
            )
        };
        match a.as_str() {
            "--bench" => {}
            "--quick" => quick = true,
            "--sizes" => value(&mut sizes),
            "--reps" => value(&mut reps),
            "--warmup" => value(&mut warmup),
            "--methods" => value(&mut methods),
            "--threads" => value(&mut threads),
            "--width-div" => value(&mut width_div),
            "--seed" => value(&mut seed),
            "--model" => value(&mut model),
            "--group-mib" => value(&mut group_mib),
            "--conv3x3" => value(&mut conv3x3),
            other => fail(&format!(
                "unknown argument '{other}' (see the header of benches/explain_vs_predict.rs)"
            )),
        }
    }
    let default_hw = if quick { 64 } else { 224 };
    let sizes = sizes
        .as_deref()
        .unwrap_or("1,8")
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| match s.trim().split_once('x') {
            Some((n, hw)) => (parse_num("batch", n), parse_num("image size", hw)),
            None => (parse_num("batch", s), default_hw),
        })
        .collect::<Vec<(usize, usize)>>();
    if sizes.iter().any(|&(n, hw)| n == 0 || hw < 32) {
        fail("sizes need a batch ≥ 1 and an image size ≥ 32");
    }
    let reps: usize = reps.map_or(3, |v| parse_num("reps", &v));
    if reps == 0 {
        fail("reps must be ≥ 1");
    }
    Options {
        quick,
        sizes,
        reps,
        warmup: warmup.map_or(1, |v| parse_num("warmup", &v)),
        methods: methods
            .as_deref()
            .unwrap_or(DEFAULT_METHODS)
            .split(',')
            .map(|m| m.trim().to_string())
            .filter(|m| !m.is_empty())
            .collect(),
        threads: match threads {
            None => vec![None],
            Some(v) => v
                .split(',')
                .filter(|t| !t.trim().is_empty())
                .map(|t| match parse_num("threads", t) {
                    0 => fail("threads must be ≥ 1"),
                    t => Some(t),
                })
                .collect(),
        },
        width_div: width_div.map_or(if quick { 4 } else { 1 }, |v| parse_num("width-div", &v)),
        seed: seed.map_or(lrp_testkit::DEFAULT_SEED, |v| parse_num("seed", &v)),
        model: match model.as_deref().unwrap_or("vgg16") {
            "vgg16" => Model::Vgg16,
            "resnet50" => Model::ResNet50,
            other => fail(&format!("--model '{other}': vgg16 or resnet50")),
        },
        group_bytes: group_mib.map(|v| match v.trim() {
            "max" => usize::MAX,
            g => parse_num::<usize>("group-mib", g).saturating_mul(1 << 20),
        }),
        // the names the engine's `Conv3x3` serialises to
        conv3x3: conv3x3.map(|v| {
            serde_json::from_value(serde_json::Value::String(v.trim().into())).unwrap_or_else(
                |_| fail(&format!("--conv3x3 '{v}': winograd, winograd4 or direct")),
            )
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Rules with f32 denominators
// ---------------------------------------------------------------------------------------------

/// Rules whose denominators are recomputed forwards, and the name of their f32 variant.
const F32_RULES: &[&str] = &["AlphaBeta", "ZPlus", "ZBox", "Flat", "WSquare", "Gamma"];

fn f32_name(rule: &str) -> String {
    format!("{rule}F32Den")
}

fn bias_of(p: &Params) -> Result<BiasMode, String> {
    match p.name("bias", "Split") {
        "Full" => Ok(BiasMode::Full),
        "Split" => Ok(BiasMode::Split),
        "Ignore" => Ok(BiasMode::Ignore),
        other => Err(format!("bias '{other}' is not Full, Split or Ignore")),
    }
}

/// Registers `<Rule>F32Den` for every rule of [`F32_RULES`]: the built-in `BasicRule` with
/// `f64_denominators` switched off, with the built-in's parameter declarations.
fn register_f32_rules(reg: &mut Registry) {
    fn off(mut r: BasicRule) -> Arc<dyn Rule> {
        r.f64_denominators = false;
        r.description = format!("{} [f32 denominators]", r.description);
        Arc::new(r)
    }
    type Build = fn(&Params, Stabilizer) -> Result<BasicRule, String>;
    let builds: [(&str, Build); 6] = [
        ("AlphaBeta", |p, s| {
            Ok(BasicRule::alpha_beta(
                p.float("alpha", 2.0),
                p.float("beta", 1.0),
                bias_of(p)?,
                s,
            ))
        }),
        ("ZPlus", |p, s| {
            Ok(BasicRule::alpha_beta(1.0, 0.0, bias_of(p)?, s))
        }),
        ("ZBox", |p, s| {
            Ok(BasicRule::z_box(
                Bounds {
                    low: p.floats("low", &[-1.0]),
                    high: p.floats("high", &[1.0]),
                },
                s,
            ))
        }),
        ("Flat", |_, s| Ok(BasicRule::flat(s))),
        ("WSquare", |_, s| Ok(BasicRule::w_square(s))),
        ("Gamma", |p, s| {
            Ok(BasicRule::gamma(
                p.float("gamma", 0.25),
                p.bool("generalized", true),
                s,
            ))
        }),
    ];
    for (name, build) in builds {
        let params: Vec<ParamDecl> = reg
            .get(name)
            .unwrap_or_else(|| fail(&format!("built-in rule {name} is not registered")))
            .params
            .clone();
        reg.register(
            &f32_name(name),
            "f32-denominator variant (benchmark)",
            params,
            move |p, d| build(p, p.stabilizer("stabilizer", d.stabilizer)).map(off),
        )
        .unwrap_or_else(|e| fail(&e));
    }
}

/// The rule configuration of `method`: a preset `NAME`, `NAME+f32den`, or the path of a rule
/// configuration file (`.ron`; it may use the `<Rule>F32Den` rules).
fn method_config(method: &str, reg: &Registry) -> RuleConfig {
    if method.ends_with(".ron") {
        return RuleConfig::load(std::path::Path::new(method), reg)
            .unwrap_or_else(|e| fail(&e.to_string()));
    }
    let Some(base) = method.strip_suffix(F32_SUFFIX) else {
        return lrp_graph::rules::presets::preset(method, reg).unwrap_or_else(|e| fail(&e));
    };
    let (_, text) = lrp_graph::rules::presets::PRESETS
        .iter()
        .find(|(n, _)| *n == base)
        .unwrap_or_else(|| fail(&format!("unknown method '{base}'")));
    let mut text = text.to_string();
    let mut replaced = 0;
    for rule in F32_RULES {
        for tail in ["(", ")", ","] {
            let from = format!("rule: {rule}{tail}");
            replaced += text.matches(&from).count();
            text = text.replace(&from, &format!("rule: {}{tail}", f32_name(rule)));
        }
    }
    if replaced == 0 {
        eprintln!("note: {base} has no recomputed-denominator rule; {method} equals {base}");
    }
    RuleConfig::parse(&text, &format!("{method} (benchmark variant)"), reg)
        .unwrap_or_else(|e| fail(&e.to_string()))
}

// ---------------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------------

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// A `kB` field of /proc/self/status, in MiB.
fn status_mib(field: &str) -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Resets the peak RSS (VmHWM) to the current RSS (Linux ≥ 4.0); false where not allowed.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// CPU seconds (user, system) used by this process so far, all threads, and its minor page
/// faults (/proc/self/stat; clock ticks of 1/100 s, the Linux default).
fn cpu_seconds() -> (f64, f64, f64) {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces: field k of
    // the line (1-based) is entry k - 3.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |k: usize| {
        f.get(k - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // minflt is field 10, utime 14, stime 15.
    (field(14) / 100.0, field(15) / 100.0, field(10))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn fmt_mib(v: Option<f64>) -> String {
    v.map_or("?".into(), |m| format!("{:.0} MiB", m))
}

struct PredictRow {
    median: f64,
    peak: Option<f64>,
}

struct ExplainRow {
    method: String,
    batch: usize,
    hw: usize,
    threads: usize,
    predict: f64,
    predict_peak: Option<f64>,
    explain: f64,
    cpu: (f64, f64, f64),
    forward: f64,
    relevance: f64,
    peak: Option<f64>,
    load: String,
}

/// Timed predict runs: at least 10 (predict is cheap next to explain, and it is the ratio's
/// denominator).
fn predict_reps(o: &Options) -> usize {
    o.reps.max(10)
}

fn time_predict(
    graph: &lrp_graph::ir::Graph,
    batch: &ArrayD<f32>,
    threads: Option<usize>,
    o: &Options,
) -> PredictRow {
    let reset = reset_peak_rss();
    let mut fwd = Forward::new(graph, Device::Cpu, ExportOutputs::Final, threads)
        .unwrap_or_else(|e| fail(&format!("predict session: {e}")));
    for _ in 0..o.warmup {
        fwd.run(batch.view())
            .unwrap_or_else(|e| fail(&e.to_string()));
    }
    let mut times = Vec::with_capacity(o.reps);
    for _ in 0..o.reps {
        let t = Instant::now();
        let acts = fwd
            .run(batch.view())
            .unwrap_or_else(|e| fail(&e.to_string()));
        times.push(t.elapsed().as_secs_f64());
        std::hint::black_box(&acts);
    }
    let peak = if reset { status_mib("VmHWM:") } else { None };
    PredictRow {
        median: median(&times),
        peak,
    }
}

fn time_explain(
    graph: &lrp_graph::ir::Graph,
    batch: &ArrayD<f32>,
    bounds: &Bounds,
    method: &str,
    reg: &Registry,
    threads: Option<usize>,
    o: &Options,
) -> (f64, (f64, f64, f64), f64, f64, Option<f64>) {
    let config = method_config(method, reg);
    let reset = reset_peak_rss();
    let mut ex = Explainer::new(graph.clone(), config, reg, Device::Cpu, threads)
        .unwrap_or_else(|e| fail(&format!("{method}: {e}")));
    let opts = ExplainOptions {
        bounds: Some(bounds.clone()),
        group_bytes: o.group_bytes,
        conv3x3: o.conv3x3,
        ..ExplainOptions::default()
    };
    let run = |ex: &mut Explainer| {
        let t = Instant::now();
        let e = ex
            .explain(batch, &opts)
            .unwrap_or_else(|e| fail(&format!("{method}: {e}")));
        let total = t.elapsed().as_secs_f64();
        std::hint::black_box(&e.relevance);
        if std::env::var_os("LRP_BENCH_PROFILE").is_some() {
            let mut v = e.node_seconds.clone();
            v.sort_by(|a, b| b.1.total_cmp(&a.1));
            let all = std::env::var("LRP_BENCH_PROFILE").is_ok_and(|v| v == "all");
            let top: Vec<String> = v
                .iter()
                .take(if all { v.len() } else { 12 })
                .map(|(n, s)| format!("{n} {s:.3}"))
                .collect();
            let sum: f64 = v.iter().map(|(_, s)| s).sum();
            eprintln!(
                "      slowest nodes (all {} nodes: {sum:.3} s): {}",
                v.len(),
                top.join(", ")
            );
        }
        (total, e.forward_seconds, e.relevance_seconds)
    };
    for i in 0..o.warmup {
        let (t, f, r) = run(&mut ex);
        eprintln!(
            "    {method} warm-up {}: {t:.2} s (forward {f:.2}, relevance {r:.2})",
            i + 1
        );
    }
    let (mut tot, mut fwd, mut rel) = (Vec::new(), Vec::new(), Vec::new());
    let c0 = cpu_seconds();
    for i in 0..o.reps {
        let (t, f, r) = run(&mut ex);
        eprintln!(
            "    {method} run {}: {t:.2} s (forward {f:.2}, relevance {r:.2})",
            i + 1
        );
        tot.push(t);
        fwd.push(f);
        rel.push(r);
    }
    let c1 = cpu_seconds();
    let cpu = (
        (c1.0 - c0.0) / o.reps as f64,
        (c1.1 - c0.1) / o.reps as f64,
        (c1.2 - c0.2) / o.reps as f64,
    );
    let peak = if reset { status_mib("VmHWM:") } else { None };
    (median(&tot), cpu, median(&fwd), median(&rel), peak)
}

fn main() {
    lrp_graph::allocator::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "explain_vs_predict: skipped (not run under `cargo bench`); run \
             `cargo bench --bench explain_vs_predict` (or LRP_BENCH_QUICK=1 for a smoke run)"
        );
        return;
    }
    let o = parse_options(&args);
    let mut reg = Registry::with_builtins();
    register_f32_rules(&mut reg);
    // Check every method before the long part.
    for m in &o.methods {
        let _ = method_config(m, &reg);
    }
    let cw = if o.quick { 1024 } else { 4096 };
    eprintln!(
        "explain_vs_predict: {} width_div {} classifier {cw}, sizes {:?} (batch, hw), {} warm-up + {} timed runs, methods {:?}, threads {} (ONNX Runtime and relevance pass), groups of images up to {}, 3x3 convolutions {}",
        o.model.name(),
        o.width_div,
        o.sizes,
        o.warmup,
        o.reps,
        o.methods,
        o.threads
            .iter()
            .map(|t| t.map_or("all cores".into(), |t| t.to_string()))
            .collect::<Vec<_>>()
            .join(", "),
        match o.group_bytes {
            None => "the engine's default".to_string(),
            Some(usize::MAX) => "the whole batch".to_string(),
            Some(b) => format!("{} MiB", b >> 20),
        },
        o.conv3x3.map_or("the engine's default".into(), |c| {
            serde_json::json!(c)
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
    );
    let peak_resettable = reset_peak_rss();
    let mut rows: Vec<ExplainRow> = Vec::new();
    let mut hws: Vec<usize> = o.sizes.iter().map(|s| s.1).collect();
    hws.dedup();
    for hw in hws {
        let t = Instant::now();
        let (params, model) = match o.model {
            Model::Vgg16 => {
                let cfg = lrp_testkit::VggConfig::new(1000, hw, o.seed)
                    .width_div(o.width_div)
                    .classifier_width(cw);
                (cfg.param_count(), cfg.build())
            }
            Model::ResNet50 => {
                let cfg =
                    lrp_testkit::ResNetConfig::resnet50(1000, hw, o.seed).width_div(o.width_div);
                (cfg.param_count(), cfg.build())
            }
        };
        let graph = {
            let (_dir, path) = lrp_testkit::temp_model(&model);
            drop(model);
            lrp_graph::import::import_onnx(&path)
                .unwrap_or_else(|e| fail(&format!("import: {e}")))
                .graph
        };
        eprintln!(
            "  {} at {hw}x{hw}: {params:?}, built and imported in {:.1} s, RSS {}",
            o.model.name(),
            t.elapsed().as_secs_f64(),
            fmt_mib(status_mib("VmRSS:"))
        );
        for &(n, _) in o.sizes.iter().filter(|s| s.1 == hw) {
            let (x, low, high) = lrp_testkit::torch_image_batch(o.seed.wrapping_add(1), n, hw);
            let batch = ArrayD::from_shape_vec(IxDyn(&[n, 3, hw, hw]), x).expect("sized");
            let bounds = Bounds { low, high };
            for &threads in &o.threads {
                // The relevance pass's workers: a pool of this size around every run.
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads.unwrap_or(0))
                    .build()
                    .unwrap_or_else(|e| fail(&format!("thread pool: {e}")));
                let workers = pool.current_num_threads();
                pool.install(|| {
                    let p = time_predict(&graph, &batch, threads, &o);
                    eprintln!("  batch {n}, {workers} threads: predict median {:.3} s", p.median);
                    for m in &o.methods {
                        let load_before = loadavg();
                        let (explain, cpu, forward, relevance, peak) =
                            time_explain(&graph, &batch, &bounds, m, &reg, threads, &o);
                        eprintln!(
                            "  batch {n}, {workers} threads: {m} explain median {explain:.3} s ({:.1}x predict)",
                            explain / p.median
                        );
                        rows.push(ExplainRow {
                            method: m.clone(),
                            batch: n,
                            hw,
                            threads: workers,
                            predict: p.median,
                            predict_peak: p.peak,
                            explain,
                            cpu,
                            forward,
                            relevance,
                            peak,
                            load: format!("{load_before} → {}", loadavg()),
                        });
                    }
                });
            }
        }
    }
    println!();
    println!(
        "{} (width_div {}, classifier {cw} for VGG16, 1000 classes, seeded random weights), CPU; explain: {} warm-up + {} timed runs, predict: {} + {}; medians",
        o.model.name(),
        o.width_div,
        o.warmup,
        o.reps,
        o.warmup.max(2),
        predict_reps(&o)
    );
    println!();
    println!(
        "| method | batch | threads | predict median s | explain median s | ratio | forward part s | relevance part s | relevance ÷ forward | explain CPU s per run (user / sys) | minor page faults per run | peak RSS (predict / explain) | loadavg 1/5/15 min (before → after) |"
    );
    println!(
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    for r in &rows {
        println!(
            "| {} | {}×{}² | {} | {:.4} | {:.3} | {:.1}× | {:.3} | {:.3} | {:.1}× | {:.2} / {:.2} | {:.0}k | {} / {} | {} |",
            r.method,
            r.batch,
            r.hw,
            r.threads,
            r.predict,
            r.explain,
            r.explain / r.predict,
            r.forward,
            r.relevance,
            r.relevance / r.forward,
            r.cpu.0,
            r.cpu.1,
            r.cpu.2 / 1e3,
            fmt_mib(r.predict_peak),
            fmt_mib(r.peak),
            r.load,
        );
    }
    println!();
    if peak_resettable {
        let overall = rows
            .iter()
            .flat_map(|r| [r.peak, r.predict_peak])
            .flatten()
            .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v))));
        println!(
            "(peak RSS: VmHWM read after each configuration and reset before it; highest {})",
            fmt_mib(overall)
        );
    } else {
        println!(
            "(peak RSS: /proc/self/clear_refs could not be written, so only the process peak is known: {})",
            fmt_mib(status_mib("VmHWM:"))
        );
    }
    for r in &rows {
        if r.relevance > 20.0 * r.forward {
            println!(
                "warning: {} batch {}: relevance pass {:.1}× the forward pass (> 20×)",
                r.method,
                r.batch,
                r.relevance / r.forward
            );
        }
    }
}
