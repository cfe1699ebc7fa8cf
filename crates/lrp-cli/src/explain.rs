//! `lrp-graph explain` and `lrp-graph rules`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use lrp_engine::{ExplainOptions, Explainer, Explanation, Targets};
use lrp_ir::{Graph, Layout, Preprocess};
use lrp_render::ChannelAxis;
use lrp_rules::{Bounds, Registry, RuleConfig, presets};
use ndarray::{ArrayD, Axis};
use serde_json::json;

use crate::args::ExplainArgs;
use crate::predict::{softmax_f64, top_k};

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

/// `explain` with a registry that may hold a user's rules.
pub fn run_with(a: ExplainArgs, registry: &Registry) -> Result<()> {
    let clock = std::time::Instant::now();
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
    let config = load_config(
        if a.rules.is_some() {
            None
        } else {
            Some(a.method.as_str())
        },
        a.rules.as_deref(),
        registry,
    )?;
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
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let pre: Option<Preprocess> = a
        .preprocess
        .as_deref()
        .map(|p| p.parse().map_err(|e| anyhow!("--preprocess: {e}")))
        .transpose()?;
    if let Some(p) = &pre {
        p.check_for(graph.input())
            .map_err(|e| anyhow!("--preprocess: {e}"))?;
    }
    let (batch, sources) = lrp_io::load_input(&a.input, graph.input(), pre.as_ref())?;
    lap("load_input", &mut since);
    if let Targets::Each(v) = &targets
        && v.len() != batch.shape()[0]
    {
        bail!(
            "--target: {} targets given for {} inputs",
            v.len(),
            batch.shape()[0]
        );
    }
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("--out {}: cannot create the folder", a.out.display()))?;
    let labels = graph.labels().map(|l| l.to_vec());
    let layout = graph.input().layout;
    let mut explainer = Explainer::new(graph, config, registry, a.device.into(), a.threads)?;
    lap("prepare", &mut since);
    let keep = explainer
        .nodes_matching(&a.keep)
        .map_err(|e| anyhow!("--keep {e}"))?;
    let mut kept: Vec<Vec<ArrayD<f32>>> = vec![Vec::new(); keep.len()];
    let n = batch.shape()[0];
    let mut maps: Vec<ArrayD<f32>> = Vec::with_capacity(n.div_ceil(a.batch_size));
    let mut records = Vec::with_capacity(n);
    let mut start = 0;
    while start < n {
        let end = (start + a.batch_size).min(n);
        let chunk = batch.slice_axis(Axis(0), (start..end).into()).to_owned();
        let chunk_targets = match &targets {
            Targets::Each(v) => Targets::Each(v[start..end].to_vec()),
            t => t.clone(),
        };
        let opts = ExplainOptions {
            targets: chunk_targets,
            bounds: bounds.clone(),
            relu: if a.relu { Some(true) } else { None },
            keep: keep.clone(),
        };
        let ex = explainer.explain(&chunk, &opts)?;
        for (k, name) in keep.iter().enumerate() {
            // A node the relevance did not reach has no entry: zeros of its shape.
            let r = match ex.kept.iter().find(|(n, _)| n == name) {
                Some((_, r)) => r.clone(),
                None => {
                    let g = explainer.graph();
                    let mut shape = vec![ex.passes.shape()[0]];
                    shape.extend_from_slice(g.tensor_shape(name).expect("a node"));
                    ArrayD::zeros(ndarray::IxDyn(&shape))
                }
            };
            kept[k].push(r);
        }
        for i in 0..(end - start) {
            let source = if sources.len() == n {
                sources[start + i].clone()
            } else {
                PathBuf::from(format!("{}[{}]", sources[0].display(), start + i))
            };
            records.push(record(&ex, i, &source, labels.as_deref()));
            for note in &ex.notes[i] {
                eprintln!("note: {}: {note}", source.display());
            }
        }
        maps.push(ex.relevance);
        start = end;
    }
    lap("explain", &mut since);
    let views: Vec<_> = maps.iter().map(|m| m.view()).collect();
    let relevance = ndarray::concatenate(Axis(0), &views).expect("chunks share a shape");
    lrp_io::write_npy(&a.out.join("relevance.npy"), &relevance)?;
    let maps_per_input = explainer.config().signal.maps();
    let kept_files = write_kept(&a.out, &keep, &kept, n, maps_per_input)?;
    let axis = if layout == Layout::NHWC {
        ChannelAxis::Last
    } else {
        ChannelAxis::First
    };
    let mut pngs = Vec::with_capacity(n);
    for (i, map) in relevance.outer_iter().enumerate() {
        let h = lrp_render::channel_sum(map, axis);
        let (hh, ww) = h.dim();
        let zoom = if a.zoom == 0 {
            lrp_render::auto_zoom(hh, ww)
        } else {
            a.zoom
        };
        let (px, zw, zh) = lrp_render::zoom_rgb(&lrp_render::heatmap_rgb(&h), ww, hh, zoom);
        let name = heatmap_name(&sources, i, n);
        let path = a.out.join(&name);
        lrp_io::write_png_rgb(&path, zw as u32, zh as u32, &px)?;
        pngs.push(name);
    }
    for (r, png) in records.iter_mut().zip(&pngs) {
        r["heatmap"] = json!(png);
    }
    lap("write", &mut since);
    stages.insert("total_seconds".into(), json!(clock.elapsed().as_secs_f64()));
    let report = json!({
        "graph": a.graph.display().to_string(),
        "method": explainer.config().name,
        "signal": format!("{:?}", explainer.config().signal),
        "softmax_removed": explainer.softmax_removed(),
        "inputs": records,
        "kept": kept_files,
        "timings": stages,
    });
    let text = serde_json::to_string_pretty(&report).expect("json");
    lrp_ir::fsutil::write_atomic(&a.out.join("report.json"), text.as_bytes())
        .with_context(|| format!("{}: cannot write", a.out.join("report.json").display()))?;
    for r in &records {
        println!(
            "{}: target {} (p = {:.4}), relevance sum {:.4e} → {}",
            r["source"].as_str().unwrap_or_default(),
            r["target"],
            r["target_probability"].as_f64().unwrap_or_default(),
            r["relevance_sum"].as_f64().unwrap_or_default(),
            a.out
                .join(r["heatmap"].as_str().unwrap_or_default())
                .display()
        );
    }
    println!("wrote {}", a.out.join("relevance.npy").display());
    if !keep.is_empty() {
        println!(
            "wrote the relevance at {} node(s) to {}",
            keep.len(),
            a.out.join("nodes").display()
        );
    }
    Ok(())
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
        let base: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
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

/// A heatmap file name per input: the image's stem, else `heatmap_<i>.png`.
fn heatmap_name(sources: &[PathBuf], i: usize, n: usize) -> String {
    if sources.len() == n
        && let Some(stem) = sources[i].file_stem()
        && sources[i].extension().is_some_and(|e| e != "npy")
    {
        return format!("{}.png", stem.to_string_lossy());
    }
    format!("heatmap_{i}.png")
}

fn record(
    ex: &Explanation,
    i: usize,
    source: &Path,
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
        "source": source.display().to_string(),
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
        "timings": {"forward_seconds": ex.forward_seconds, "relevance_seconds": ex.relevance_seconds},
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
