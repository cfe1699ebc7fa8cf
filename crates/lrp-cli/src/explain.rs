//! `lrp-graph explain` and `lrp-graph rules`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, anyhow, bail};
use lrp_engine::{Conv3x3, ExplainOptions, Explainer, Explanation, Targets};
use lrp_ir::{Graph, Layout, Preprocess};
use lrp_render::ChannelAxis;
use lrp_rules::{Bounds, Registry, RuleConfig, presets};
use ndarray::{ArrayD, Axis};
use serde_json::json;

use crate::args::{ExplainArgs, ProgressArg};
use crate::predict::{softmax_f64, top_k};
use crate::{folder, gallery};

/// Loads the rule configuration named by `--method` or `--rules`.
pub fn load_config(
    method: Option<&str>,
    rules: Option<&Path>,
    registry: &Registry,
) -> Result<RuleConfig> {
    match (rules, method) {
        (Some(path), _) => Ok(RuleConfig::load(path, registry)?),
        (None, Some(m)) => presets::preset(m, registry).map_err(|e| anyhow!("--method: {e}")),
        (None, None) => bail!("give --method or --rules"),
    }
}

fn parse_values(s: &str, what: &str) -> Result<Vec<f32>> {
    s.split('/')
        .map(|v| {
            v.trim()
                .parse::<f32>()
                .map_err(|_| anyhow!("{what}: '{v}' is not a number"))
        })
        .collect()
}

fn parse_targets(s: &str) -> Result<Targets> {
    let s = s.trim();
    if s == "top" {
        return Ok(Targets::Top);
    }
    let v: Vec<usize> = s
        .split(',')
        .map(|t| {
            t.trim()
                .parse::<usize>()
                .map_err(|_| anyhow!("--target: '{t}' is not a class index (or 'top')"))
        })
        .collect::<Result<_>>()?;
    Ok(if v.len() == 1 {
        Targets::All(v[0])
    } else {
        Targets::Each(v)
    })
}

/// One input of a run: where it comes from and where its outputs go.
struct Item {
    /// Position among all inputs (before sharding): indexes `--target` lists.
    index: usize,
    /// How reports name it: the relative path of a folder's file, the file, or `x.npy[i]`.
    source: String,
    /// The image file, for image inputs.
    file: Option<PathBuf>,
    /// Output path without extension, relative to a method's output folder.
    stem: PathBuf,
}

/// Everything `explain` reads from its arguments besides the graph.
struct Plan {
    targets: Targets,
    bounds: Option<Bounds>,
    pre: Option<Preprocess>,
    render: lrp_render::RenderOptions,
}

/// The input: a batch already in memory (`.npy`, one image) or the files of a folder.
enum Inputs {
    Array(ArrayD<f32>),
    Files(Vec<Item>),
}

/// A method's explainer and its output folder.
struct Method {
    explainer: Explainer,
    dir: PathBuf,
    name: String,
}

/// Counts of a run.
#[derive(Default)]
struct Tally {
    done: usize,
    skipped: usize,
    failed: usize,
}

/// The run stopped early on Ctrl-C.
#[derive(Debug, thiserror::Error)]
#[error(
    "interrupted after {done} of {total} input(s); every output written is complete{}",
    if *.folder { ", and --resume continues where this run stopped" } else { "" }
)]
pub struct Interrupted {
    /// Inputs done.
    pub done: usize,
    /// Inputs of the run.
    pub total: usize,
    /// Whether the input is a folder (which `--resume` can continue).
    pub folder: bool,
}

/// Some inputs of a folder could not be explained.
#[derive(Debug, thiserror::Error)]
#[error(
    "{failed} of {total} input(s) could not be explained (listed on stderr and in {manifest} with \"status\": \"error\"); the others were"
)]
pub struct InputsFailed {
    /// Inputs that failed.
    pub failed: usize,
    /// Inputs of the run.
    pub total: usize,
    /// The manifest's path.
    pub manifest: String,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Ctrl-C once: finish the current batch, then stop; twice: stop now.
fn install_interrupt_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                eprintln!("\nstopped");
                std::process::exit(130);
            }
            eprintln!("\nCtrl-C: stopping after the current batch (Ctrl-C again to stop now)");
        });
    });
}

/// `explain` with a registry that may hold a user's rules.
pub fn run_with(a: ExplainArgs, registry: &Registry) -> Result<()> {
    let clock = std::time::Instant::now();
    // Small pages from the start, in case the run is short (see crate::small_pages); undone
    // below once the inputs say it is not.
    crate::small_pages(true);
    let mut stages = serde_json::Map::new();
    let mut lap = |name: &str, since: &mut std::time::Instant| {
        stages.insert(
            format!("{name}_seconds"),
            json!(since.elapsed().as_secs_f64()),
        );
        *since = std::time::Instant::now();
    };
    let mut since = clock;
    let graph = Graph::load(&a.graph)?;
    lap("load_graph", &mut since);
    let configs: Vec<RuleConfig> = match &a.rules {
        Some(path) => vec![load_config(None, Some(path), registry)?],
        None => {
            let names: Vec<&str> = a.method.split(',').map(str::trim).collect();
            if names.iter().any(|n| n.is_empty()) {
                bail!("--method '{}': an empty method name", a.method);
            }
            let mut seen = std::collections::HashSet::new();
            if let Some(d) = names.iter().find(|n| !seen.insert(**n)) {
                bail!("--method: '{d}' is given twice");
            }
            names
                .iter()
                .map(|m| load_config(Some(m), None, registry))
                .collect::<Result<_>>()?
        }
    };
    let plan = plan(&a, &graph)?;
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if let Some(alpha) = a.overlay
        && !(0.0..=1.0).contains(&alpha)
    {
        bail!("--overlay {alpha}: the heatmap's weight must be between 0 and 1");
    }
    let is_dir = a.input.is_dir();
    folder::check_folder_options(is_dir, &a.shard, a.resume)?;
    let shard = a.shard.as_deref().map(folder::Shard::parse).transpose()?;
    // How image files become samples: --preprocess, else the graph's, else none.
    let image_pre = plan
        .pre
        .clone()
        .or_else(|| graph.input().preprocess.clone())
        .unwrap_or_else(Preprocess::none);
    let (inputs, total_inputs) = if is_dir {
        lrp_io::check_image_input(&a.input, graph.input(), &image_pre).context("--input")?;
        let files = lrp_io::list_images(&a.input)?;
        let total = files.len();
        let rels: Vec<PathBuf> = files
            .iter()
            .map(|f| f.strip_prefix(&a.input).unwrap_or(f).to_path_buf())
            .collect();
        // Outputs are named by the file without its extension, unless two files differ only
        // in their extensions (a.jpg, a.png): those keep it (a.jpg.png, a.png.png).
        let mut stems = std::collections::HashMap::<PathBuf, usize>::new();
        for r in &rels {
            *stems.entry(r.with_extension("")).or_default() += 1;
        }
        let items: Vec<Item> = files
            .into_iter()
            .zip(rels)
            .enumerate()
            .filter_map(|(index, (file, rel))| {
                if shard.is_some_and(|s| !s.owns(&rel)) {
                    return None;
                }
                let bare = rel.with_extension("");
                let stem = if stems[&bare] > 1 { rel.clone() } else { bare };
                Some(Item {
                    index,
                    source: folder::slash_path(&rel),
                    stem,
                    file: Some(file),
                })
            })
            .collect();
        (Inputs::Files(items), total)
    } else {
        let (batch, _) = lrp_io::load_input(&a.input, graph.input(), plan.pre.as_ref())?;
        let n = batch.shape()[0];
        (Inputs::Array(batch), n)
    };
    if let Targets::Each(v) = &plan.targets
        && v.len() != total_inputs
    {
        bail!(
            "--target: {} targets given for {} inputs",
            v.len(),
            total_inputs
        );
    }
    lap("load_input", &mut since);
    let todo = match &inputs {
        Inputs::Array(batch) => batch.shape()[0],
        Inputs::Files(items) => items.len(),
    };
    if todo.div_ceil(a.batch_size) * configs.len() > crate::SMALL_PAGE_CALLS {
        crate::small_pages(false);
    }
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("--out {}: cannot create the folder", a.out.display()))?;
    let labels = graph.labels().map(|l| l.to_vec());
    let layout = graph.input().layout;
    let single = configs.len() == 1;
    let mut methods = Vec::with_capacity(configs.len());
    // The last method takes the graph itself: one copy of the weights fewer.
    let mut graph = Some(graph);
    let count = configs.len();
    for (i, config) in configs.into_iter().enumerate() {
        let name = config.name.clone();
        let dir = if single {
            a.out.clone()
        } else {
            a.out.join(&name)
        };
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("{}: cannot create the folder", dir.display()))?;
        let g = if i + 1 == count {
            graph.take().expect("taken once")
        } else {
            graph.as_ref().expect("not taken yet").clone()
        };
        let explainer = Explainer::new(g, config, registry, a.device.into(), a.threads)?;
        methods.push(Method {
            explainer,
            dir,
            name,
        });
    }
    let keep = methods[0]
        .explainer
        .nodes_matching(&a.keep)
        .map_err(|e| anyhow!("--keep {e}"))?;
    lap("prepare", &mut since);
    install_interrupt_handler();
    let writer = Writer {
        a: &a,
        layout,
        labels: labels.as_deref(),
        plan: &plan,
        image_pre: &image_pre,
        single,
    };
    let result = match inputs {
        Inputs::Array(batch) => writer.run_array(&mut methods, batch, &keep),
        Inputs::Files(items) => writer.run_folder(&mut methods, items, total_inputs, shard, &keep),
    };
    lap("explain_and_write", &mut since);
    let report_extra = result?;
    if a.html {
        let title = format!(
            "lrp-graph explain: {} ({})",
            a.input.display(),
            methods
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let names: Vec<String> = methods.iter().map(|m| m.name.clone()).collect();
        let n = gallery::write(&a.out, &title, &names, plan.render.colormap.name())?;
        println!(
            "wrote {} ({n} input(s))",
            a.out.join("index.html").display()
        );
    }
    stages.insert("total_seconds".into(), json!(clock.elapsed().as_secs_f64()));
    if let Some((records, kept_files)) = report_extra {
        // Batch inputs: report.json per method, as before folder runs existed.
        for (m, recs) in methods.iter().zip(records) {
            let report = json!({
                "graph": a.graph.display().to_string(),
                "method": m.explainer.config().name,
                "signal": format!("{:?}", m.explainer.config().signal),
                "softmax_removed": m.explainer.softmax_removed(),
                "conv3x3": Conv3x3::from(a.conv3x3),
                "inputs": recs,
                "kept": kept_files,
                "timings": stages,
            });
            let text = serde_json::to_string_pretty(&report).expect("json");
            let path = m.dir.join("report.json");
            lrp_ir::fsutil::write_atomic(&path, text.as_bytes())
                .with_context(|| format!("{}: cannot write", path.display()))?;
        }
    }
    Ok(())
}

/// Reads the targets, bounds, preprocessing and heatmap options.
fn plan(a: &ExplainArgs, graph: &Graph) -> Result<Plan> {
    let targets = parse_targets(&a.target)?;
    let bounds = match (&a.low, &a.high) {
        (None, None) => None,
        (Some(l), Some(h)) => {
            let b = Bounds {
                low: parse_values(l, "--low")?,
                high: parse_values(h, "--high")?,
            };
            lrp_rules::registry::check_bounds(&b).map_err(|e| anyhow!("--low/--high: {e}"))?;
            Some(b)
        }
        _ => bail!("--low and --high go together"),
    };
    let pre: Option<Preprocess> = a
        .preprocess
        .as_deref()
        .map(|p| p.parse().map_err(|e| anyhow!("--preprocess: {e}")))
        .transpose()?;
    if let Some(p) = &pre {
        p.check_for(graph.input())
            .map_err(|e| anyhow!("--preprocess: {e}"))?;
    }
    let render = lrp_render::RenderOptions {
        colormap: a.cmap,
        normalization: a.norm,
        clip: a.clip,
        reduction: a.reduce,
    };
    Ok(Plan {
        targets,
        bounds,
        pre,
        render,
    })
}

/// A method's explanation of a batch with, per input, its report.json record and its
/// manifest line.
type BatchOutput = (Explanation, Vec<(serde_json::Value, serde_json::Value)>);

/// Per-batch records of every method, and the kept nodes' files, of a batch input.
type BatchReport = Option<(
    Vec<Vec<serde_json::Value>>,
    serde_json::Map<String, serde_json::Value>,
)>;

/// Writes the outputs of a run.
struct Writer<'a> {
    a: &'a ExplainArgs,
    layout: Layout,
    labels: Option<&'a [String]>,
    plan: &'a Plan,
    /// The preprocessing image files are loaded with (also to show them as the model saw
    /// them).
    image_pre: &'a Preprocess,
    single: bool,
}

impl Writer<'_> {
    fn axis(&self) -> ChannelAxis {
        if self.layout == Layout::NHWC {
            ChannelAxis::Last
        } else {
            ChannelAxis::First
        }
    }

    fn options(&self, items: &[&Item], keep: &[String]) -> ExplainOptions {
        ExplainOptions {
            targets: match &self.plan.targets {
                Targets::Each(v) => Targets::Each(items.iter().map(|i| v[i.index]).collect()),
                t => t.clone(),
            },
            bounds: self.plan.bounds.clone(),
            relu: if self.a.relu { Some(true) } else { None },
            keep: keep.to_vec(),
            group_bytes: None,
            conv3x3: Some(self.a.conv3x3.into()),
        }
    }

    /// A `.npy` batch or one image: relevance.npy and report.json per method, as well as the
    /// per-input outputs.
    fn run_array(
        &self,
        methods: &mut [Method],
        batch: ArrayD<f32>,
        keep: &[String],
    ) -> Result<BatchReport> {
        let a = self.a;
        let n = batch.shape()[0];
        let single_image = a.input.extension().is_some_and(|e| e != "npy");
        let items: Vec<Item> = (0..n)
            .map(|i| {
                if single_image {
                    let stem = a.input.file_stem().map(PathBuf::from).unwrap_or_default();
                    Item {
                        index: i,
                        source: a.input.display().to_string(),
                        file: Some(a.input.clone()),
                        stem,
                    }
                } else {
                    Item {
                        index: i,
                        source: format!("{}[{i}]", a.input.display()),
                        file: None,
                        stem: PathBuf::from(format!("heatmap_{i}")),
                    }
                }
            })
            .collect();
        let (mut manifest, _) = folder::Manifest::open(&a.out, "manifest.jsonl", false)?;
        let mut maps: Vec<Vec<ArrayD<f32>>> = vec![Vec::new(); methods.len()];
        let mut records: Vec<Vec<serde_json::Value>> = vec![Vec::new(); methods.len()];
        let mut kept: Vec<Vec<ArrayD<f32>>> = vec![Vec::new(); keep.len()];
        let mut progress = Progress::new(a.progress, n, n > a.batch_size);
        for (b, chunk_items) in items.chunks(a.batch_size).enumerate() {
            let start = b * a.batch_size;
            let chunk = batch
                .slice_axis(Axis(0), (start..start + chunk_items.len()).into())
                .to_owned();
            let refs: Vec<&Item> = chunk_items.iter().collect();
            let outs = self.explain_batch(methods, &refs, &chunk, keep, false)?;
            for line in manifest_lines(methods, &outs) {
                manifest.write(&line)?;
            }
            for (mi, (ex, recs)) in outs.into_iter().enumerate() {
                if mi == 0 {
                    for (k, (_, r)) in ex.kept.iter().enumerate() {
                        kept[k].push(r.clone());
                    }
                }
                maps[mi].push(ex.relevance);
                records[mi].extend(recs.into_iter().map(|r| r.0));
            }
            progress.advance(chunk_items.len(), 0);
            if INTERRUPTED.load(Ordering::SeqCst) {
                progress.finish();
                return Err(Interrupted {
                    done: start + chunk_items.len(),
                    total: n,
                    folder: false,
                }
                .into());
            }
        }
        progress.finish();
        for (m, chunks) in methods.iter().zip(&maps) {
            let views: Vec<_> = chunks.iter().map(|c| c.view()).collect();
            let relevance = ndarray::concatenate(Axis(0), &views).expect("chunks share a shape");
            lrp_io::write_npy(&m.dir.join("relevance.npy"), &relevance)?;
        }
        let maps_per_input = methods[0].explainer.config().signal.maps();
        let kept_files = write_kept(&methods[0].dir, keep, &kept, n, maps_per_input)?;
        for (m, recs) in methods.iter().zip(&records) {
            for r in recs {
                let heat = m.dir.join(r["heatmap"].as_str().unwrap_or_default());
                println!(
                    "{}: target {} (p = {:.4}), relevance sum {:.4e} → {}",
                    r["source"].as_str().unwrap_or_default(),
                    r["target"],
                    r["target_probability"].as_f64().unwrap_or_default(),
                    r["relevance_sum"].as_f64().unwrap_or_default(),
                    heat.display()
                );
            }
            println!("wrote {}", m.dir.join("relevance.npy").display());
        }
        if !keep.is_empty() {
            println!(
                "wrote the relevance at {} node(s) to {}",
                keep.len(),
                methods[0].dir.join("nodes").display()
            );
        }
        Ok(Some((records, kept_files)))
    }

    /// A folder: batches of files streamed through every method, outputs mirroring the folder,
    /// one manifest line per input.
    fn run_folder(
        &self,
        methods: &mut [Method],
        items: Vec<Item>,
        total_inputs: usize,
        shard: Option<folder::Shard>,
        keep: &[String],
    ) -> Result<BatchReport> {
        let a = self.a;
        if a.resume {
            folder::sweep_temporaries(&a.out);
        }
        let manifest_name = folder::Shard::manifest_name(shard);
        let (mut manifest, done) = folder::Manifest::open(&a.out, &manifest_name, a.resume)?;
        let (todo, skipped): (Vec<&Item>, Vec<&Item>) =
            items.iter().partition(|i| !done.contains(&i.source));
        let mut tally = Tally {
            skipped: skipped.len(),
            ..Default::default()
        };
        let mut progress = Progress::new(a.progress, todo.len(), true);
        if tally.skipped > 0 {
            progress.note(&format!(
                "--resume: {} input(s) already done, {} to go",
                tally.skipped,
                todo.len()
            ));
        }
        for chunk in todo.chunks(a.batch_size) {
            let t_load = std::time::Instant::now();
            let mut ok: Vec<&Item> = Vec::with_capacity(chunk.len());
            let mut samples = Vec::with_capacity(chunk.len());
            for item in chunk {
                let file = item.file.as_ref().expect("folder items are files");
                let loaded =
                    lrp_io::load_image(file, methods[0].explainer.graph().input(), self.image_pre);
                match loaded {
                    Ok(x) => {
                        ok.push(item);
                        samples.push(x);
                    }
                    Err(e) => {
                        tally.failed += 1;
                        let msg = e.to_string();
                        progress.note(&format!("failed: {msg}"));
                        manifest.write(&error_line(item, &msg))?;
                    }
                }
            }
            let load_seconds = t_load.elapsed().as_secs_f64();
            if !ok.is_empty() {
                let views: Vec<_> = samples.iter().map(|s| s.view()).collect();
                let batch = ndarray::stack(Axis(0), &views).expect("samples share the input shape");
                drop(samples);
                match self.explain_batch(methods, &ok, &batch, keep, true) {
                    Ok(outs) => {
                        for mut line in manifest_lines(methods, &outs) {
                            line["timings"]["load_seconds"] = json!(load_seconds / ok.len() as f64);
                            manifest.write(&line)?;
                        }
                        tally.done += ok.len();
                    }
                    // A batch whose images all loaded but failed as a whole (e.g. NaN in
                    // the pass): each of its inputs is recorded as failed, the run goes on.
                    Err(e) => {
                        let msg = crate::one_line(&e);
                        progress.note(&format!(
                            "failed: batch of {} input(s) from {}: {msg}",
                            ok.len(),
                            ok[0].source
                        ));
                        for item in &ok {
                            tally.failed += 1;
                            manifest.write(&error_line(item, &msg))?;
                        }
                    }
                }
            }
            progress.advance(chunk.len(), tally.failed);
            if INTERRUPTED.load(Ordering::SeqCst) {
                progress.finish();
                return Err(Interrupted {
                    done: tally.done + tally.skipped,
                    total: items.len(),
                    folder: true,
                }
                .into());
            }
        }
        progress.finish();
        println!(
            "explained {} of {} input(s){}{}{} → {}",
            tally.done,
            items.len(),
            match shard {
                Some(s) => format!(" (shard {}/{} of {total_inputs})", s.k, s.n),
                None => String::new(),
            },
            if tally.skipped > 0 {
                format!(", {} already done", tally.skipped)
            } else {
                String::new()
            },
            if tally.failed > 0 {
                format!(", {} failed", tally.failed)
            } else {
                String::new()
            },
            a.out.display()
        );
        println!("wrote {}", a.out.join(&manifest_name).display());
        if tally.failed > 0 {
            return Err(InputsFailed {
                failed: tally.failed,
                total: items.len(),
                manifest: a.out.join(&manifest_name).display().to_string(),
            }
            .into());
        }
        Ok(None)
    }

    /// Explains one batch with every method and writes the per-input outputs; returns per
    /// method the explanation and per input its report.json record and manifest line.
    fn explain_batch(
        &self,
        methods: &mut [Method],
        items: &[&Item],
        batch: &ArrayD<f32>,
        keep: &[String],
        per_input_npy: bool,
    ) -> Result<Vec<BatchOutput>> {
        let a = self.a;
        let opts = self.options(items, keep);
        let mut out = Vec::with_capacity(methods.len());
        // The inputs as the model saw them, for overlays and the gallery.
        let need_images = a.overlay.is_some() || a.html;
        let images: Vec<Option<lrp_render::Rgb>> = items
            .iter()
            .zip(batch.outer_iter())
            .map(|(item, x)| {
                let pre = item.file.as_ref().map(|_| self.image_pre);
                need_images.then(|| input_rgb(x, self.layout, pre))
            })
            .collect();
        let mut input_images: Vec<Option<String>> = vec![None; items.len()];
        if a.html {
            for (k, item) in items.iter().enumerate() {
                let rel = Path::new("inputs").join(suffixed(&item.stem, ".png"));
                let img = images[k].as_ref().expect("made for --html");
                let zoomed = zoom(img, a.zoom)?;
                write_png(&a.out.join(&rel), &zoomed)?;
                input_images[k] = Some(folder::slash_path(&rel));
            }
        }
        for m in methods.iter_mut() {
            let t0 = std::time::Instant::now();
            let ex = m.explainer.explain(batch, &opts)?;
            let explain_seconds = t0.elapsed().as_secs_f64();
            let prefix = if self.single {
                PathBuf::new()
            } else {
                PathBuf::from(&m.name)
            };
            let mut recs = Vec::with_capacity(items.len());
            let mut tiles = Vec::new();
            let maps = m.explainer.config().signal.maps();
            for (k, item) in items.iter().enumerate() {
                let t_write = std::time::Instant::now();
                let map = ex.relevance.index_axis(Axis(0), k);
                let heat = lrp_render::render(map.view(), self.axis(), &self.plan.render);
                let heat_z = zoom(&heat, a.zoom)?;
                let heat_rel = suffixed(&item.stem, ".png");
                write_png(&m.dir.join(&heat_rel), &heat_z)?;
                let mut outputs = serde_json::Map::new();
                outputs.insert(
                    "heatmap".into(),
                    json!(folder::slash_path(&prefix.join(&heat_rel))),
                );
                let mut tile_img = heat_z.clone();
                if let (Some(alpha), Some(img)) = (a.overlay, images[k].as_ref()) {
                    let over = lrp_render::overlay(&heat, img, alpha)?;
                    let over_z = zoom(&over, a.zoom)?;
                    let rel = suffixed(&item.stem, ".overlay.png");
                    write_png(&m.dir.join(&rel), &over_z)?;
                    outputs.insert(
                        "overlay".into(),
                        json!(folder::slash_path(&prefix.join(&rel))),
                    );
                    tile_img = over_z;
                }
                if per_input_npy {
                    let rel = suffixed(&item.stem, ".npy");
                    write_npy(&m.dir.join(&rel), &map.to_owned())?;
                    outputs.insert(
                        "relevance".into(),
                        json!(folder::slash_path(&prefix.join(&rel))),
                    );
                    for (name, r) in &ex.kept {
                        let rows = r.slice_axis(Axis(0), (k * maps..(k + 1) * maps).into());
                        let rel = Path::new("nodes")
                            .join(safe_name(name))
                            .join(suffixed(&item.stem, ".npy"));
                        write_npy(&m.dir.join(rel), &rows.to_owned())?;
                    }
                }
                for note in &ex.notes[k] {
                    eprintln!("note: {}: {} ({note})", item.source, m.name);
                }
                let mut rec = record(&ex, k, &item.source, self.labels);
                rec["heatmap"] = json!(folder::slash_path(&heat_rel));
                if let Some(o) = outputs.get("overlay") {
                    rec["overlay"] = o.clone();
                }
                let t = ex.targets[k];
                let p = rec["target_probability"].as_f64().unwrap_or_default();
                if a.grid.is_some() {
                    let label = rec["target_label"]
                        .as_str()
                        .map_or_else(|| format!("class {t}"), str::to_string);
                    tiles.push(lrp_render::Tile::new(
                        tile_img,
                        [
                            item.source.clone(),
                            format!("{label} {p:.3}"),
                            m.name.clone(),
                        ],
                    ));
                }
                let mut per_method = outputs.clone();
                per_method.insert("relevance_sum".into(), rec["relevance_sum"].clone());
                per_method.insert("conservation_gap".into(), rec["conservation_gap"].clone());
                let mut line = json!({
                    "source": item.source,
                    "index": item.index,
                    "status": "ok",
                    "target": t,
                    "target_label": rec["target_label"],
                    "target_probability": p,
                    "top5": rec["top5"],
                    "methods": {m.name.clone(): per_method},
                    "timings": {
                        "explain_seconds": explain_seconds / items.len() as f64,
                        "write_seconds": t_write.elapsed().as_secs_f64(),
                    },
                });
                if let Some(img) = &input_images[k] {
                    line["input_image"] = json!(img);
                }
                recs.push((rec, line));
            }
            if let Some(cols) = a.grid {
                let cols = if cols == 0 {
                    (tiles.len() as f64).sqrt().ceil() as usize
                } else {
                    cols
                };
                let img = lrp_render::grid(&tiles, cols.max(1))?;
                // Named by the batch's first input, so shards and resumed runs never clash.
                write_png(&m.dir.join(format!("grid-{:06}.png", items[0].index)), &img)?;
            }
            out.push((ex, recs));
        }
        Ok(out)
    }
}

/// The manifest line of an input that failed.
fn error_line(item: &Item, message: &str) -> serde_json::Value {
    json!({
        "source": item.source,
        "index": item.index,
        "status": "error",
        "error": message,
    })
}

/// One manifest line per input of a batch, with every method's outputs under `methods`.
fn manifest_lines(methods: &[Method], outs: &[BatchOutput]) -> Vec<serde_json::Value> {
    let (_, first) = &outs[0];
    (0..first.len())
        .map(|k| {
            let mut line = first[k].1.clone();
            let mut per = serde_json::Map::new();
            for (m, (_, recs)) in methods.iter().zip(outs) {
                per.insert(m.name.clone(), recs[k].1["methods"][&m.name].clone());
            }
            line["methods"] = serde_json::Value::Object(per);
            line
        })
        .collect()
}

/// `stem` with `suffix` appended to its file name (`a.b` + `.png` = `a.b.png`).
fn suffixed(stem: &Path, suffix: &str) -> PathBuf {
    let mut name = stem.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// Enlarges an image by `zoom` with nearest sampling (0: enough for the shorter side to reach
/// 112 pixels).
fn zoom(img: &lrp_render::Rgb, zoom: usize) -> Result<lrp_render::Rgb> {
    let (w, h) = (img.width(), img.height());
    let f = if zoom == 0 {
        lrp_render::auto_zoom(h, w)
    } else {
        zoom
    };
    Ok(lrp_render::resize(
        img,
        w * f,
        h * f,
        lrp_render::Filter::Nearest,
    )?)
}

/// Creates the folder of `path` (an output mirroring a sub-folder of the input).
fn create_parent(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("{}: cannot create the folder", parent.display()))?;
    }
    Ok(())
}

/// Writes a relevance array as `.npy`, creating its folder.
fn write_npy(path: &Path, array: &ArrayD<f32>) -> Result<()> {
    create_parent(path)?;
    Ok(lrp_io::write_npy(path, array)?)
}

/// Writes an image as PNG, creating its folder.
fn write_png(path: &Path, img: &lrp_render::Rgb) -> Result<()> {
    create_parent(path)?;
    lrp_io::write_png_rgb(path, img.width() as u32, img.height() as u32, img.pixels())?;
    Ok(())
}

/// Reads a sample's value at (channel, row, column).
type Sampler<'a> = Box<dyn Fn(usize, usize, usize) -> f32 + 'a>;

/// A sample as 8-bit RGB, as the model saw it: the preprocessing undone where it is known
/// (images), else each sample scaled from its min..max to 0..255 (arrays).
fn input_rgb(
    x: ndarray::ArrayViewD<'_, f32>,
    layout: Layout,
    pre: Option<&Preprocess>,
) -> lrp_render::Rgb {
    let (lo, hi) = x
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let (c, h, w, at): (usize, usize, usize, Sampler<'_>) = match (x.ndim(), layout) {
        (3, Layout::NHWC) => {
            let (h, w, c) = (x.shape()[0], x.shape()[1], x.shape()[2]);
            (c, h, w, Box::new(move |ch, y, xx| x[[y, xx, ch]]))
        }
        (3, _) => {
            let (c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2]);
            (c, h, w, Box::new(move |ch, y, xx| x[[ch, y, xx]]))
        }
        _ => {
            let n = x.len();
            let flat: Vec<f32> = x.iter().copied().collect();
            (1, 1, n, Box::new(move |_, _, xx| flat[xx]))
        }
    };
    let pixel = |ch: usize, y: usize, xx: usize| -> u8 {
        let v = at(ch, y, xx);
        let p = match pre {
            Some(p) => p.pixel(v, ch),
            None if hi > lo => (v - lo) / (hi - lo) * 255.0,
            None => 0.0,
        };
        p.round().clamp(0.0, 255.0) as u8
    };
    let bgr = pre.is_some_and(|p| p.order == lrp_ir::ChannelOrder::BGR);
    let mut px = Vec::with_capacity(h * w * 3);
    for y in 0..h {
        for xx in 0..w {
            if c >= 3 {
                let rgb = if bgr { [2, 1, 0] } else { [0, 1, 2] };
                for ch in rgb {
                    px.push(pixel(ch, y, xx));
                }
            } else {
                let g = pixel(0, y, xx);
                px.extend_from_slice(&[g, g, g]);
            }
        }
    }
    lrp_render::Rgb::new(w, h, px).expect("sized")
}

/// A node name made file-safe.
fn safe_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Progress on stderr: a bar on a terminal, plain lines otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    lines: bool,
    total: usize,
    done: usize,
    start: std::time::Instant,
}

impl Progress {
    fn new(mode: ProgressArg, total: usize, show: bool) -> Self {
        use std::io::IsTerminal;
        let tty = std::io::stderr().is_terminal();
        let (bar, lines) = match mode {
            _ if !show => (false, false),
            ProgressArg::Auto => (tty, !tty),
            ProgressArg::Bar => (true, false),
            ProgressArg::Lines => (false, true),
            ProgressArg::None => (false, false),
        };
        let bar = bar.then(|| {
            let b = indicatif::ProgressBar::new(total as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} inputs  {per_sec}  ETA {eta}  {msg}",
                )
                .expect("template"),
            );
            b
        });
        Progress {
            bar,
            lines,
            total,
            done: 0,
            start: std::time::Instant::now(),
        }
    }

    fn advance(&mut self, n: usize, failed: usize) {
        self.done += n;
        if let Some(b) = &self.bar {
            b.inc(n as u64);
            if failed > 0 {
                b.set_message(format!("{failed} failed"));
            }
        } else if self.lines {
            let secs = self.start.elapsed().as_secs_f64();
            let rate = self.done as f64 / secs.max(1e-9);
            let eta = (self.total - self.done) as f64 / rate.max(1e-9);
            eprintln!(
                "explain: {}/{} inputs ({:.0} %), {failed} failed, {rate:.2} inputs/s, ETA {eta:.0} s",
                self.done,
                self.total,
                100.0 * self.done as f64 / self.total.max(1) as f64
            );
        }
    }

    fn note(&self, text: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("{text}")),
            None => eprintln!("{text}"),
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}

/// Writes each kept node's relevance, `[N, ...]` (or `[N, maps, ...]` for a two-pass signal:
/// the target pass then the dual pass), to `OUT/nodes/<name>.npy` with the name made
/// file-safe; returns node → file (relative to OUT).
fn write_kept(
    out: &Path,
    keep: &[String],
    kept: &[Vec<ArrayD<f32>>],
    n: usize,
    maps: usize,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    let mut files = serde_json::Map::new();
    if keep.is_empty() {
        return Ok(files);
    }
    let dir = out.join("nodes");
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("{}: cannot create the folder", dir.display()))?;
    let mut used = std::collections::HashSet::new();
    for (name, chunks) in keep.iter().zip(kept) {
        let views: Vec<_> = chunks.iter().map(|m| m.view()).collect();
        let r = ndarray::concatenate(Axis(0), &views).expect("chunks share a shape");
        let r = if maps > 1 {
            let mut shape = vec![n, maps];
            shape.extend_from_slice(&r.shape()[1..]);
            r.into_shape_with_order(ndarray::IxDyn(&shape))
                .expect("maps are image-major")
        } else {
            r
        };
        let base = safe_name(name);
        let mut file = format!("{base}.npy");
        let mut k = 2;
        while !used.insert(file.clone()) {
            file = format!("{base}_{k}.npy");
            k += 1;
        }
        lrp_io::write_npy(&dir.join(&file), &r)?;
        files.insert(name.clone(), json!(format!("nodes/{file}")));
    }
    Ok(files)
}

fn record(
    ex: &Explanation,
    i: usize,
    source: &str,
    labels: Option<&[String]>,
) -> serde_json::Value {
    let row = ex.logits.row(i);
    let probs = softmax_f64(row.as_slice().expect("standard layout"));
    let label = |c: usize| labels.map(|l| l[c].clone());
    let top: Vec<_> = top_k(&probs, 5)
        .into_iter()
        .map(|c| json!({"class": c, "label": label(c), "probability": probs[c], "logit": row[c]}))
        .collect();
    let t = ex.targets[i];
    let map = ex.relevance.index_axis(Axis(0), i);
    let nodes: serde_json::Map<String, serde_json::Value> = ex
        .node_sums
        .iter()
        .map(|(name, sums)| (name.clone(), json!(sums[i])))
        .collect();
    json!({
        "source": source,
        "target": t,
        "target_label": label(t),
        "target_probability": probs[t],
        "top5": top,
        "relevance_sum": map.iter().map(|&v| v as f64).sum::<f64>(),
        "relevance_max_abs": map.iter().fold(0f32, |m, &v| m.max(v.abs())),
        "initial_relevance_sum": ex.initial_sums[i],
        "conservation_gap": ex.conservation_gap[i],
        "node_relevance_sums": nodes,
        "notes": ex.notes[i].iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        "timings": {
            "forward_seconds": ex.forward_seconds,
            "relevance_seconds": ex.relevance_seconds,
            "image_groups": ex.groups.as_ref().map(|(from, images)| json!({"from": from, "images": images})),
        },
    })
}

/// `lrp-graph rules`: registered rules with their parameters, then the methods.
pub fn list_rules(registry: &Registry) -> Result<()> {
    let mut out = String::from("rules:\n");
    for e in registry.entries() {
        out.push_str(&format!("  {}: {}\n", e.name, e.doc));
        for p in &e.params {
            out.push_str(&format!("      {}: {}\n", p.name, p.doc));
        }
    }
    out.push_str("\nmethods (--method):\n");
    for name in presets::names() {
        let c = presets::preset(name, registry).map_err(|e| anyhow!(e))?;
        out.push_str(&format!("  {name}: {}\n", c.description));
    }
    print!("{out}");
    Ok(())
}
