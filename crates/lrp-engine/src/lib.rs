//! The relevance pass: a graph, a rule configuration and an input batch in; relevance maps,
//! per-node relevance and a report out.
//!
//! [`Explainer::new`] canonicalises the graph (final Softmax removed, BatchNorm folded into the
//! preceding Conv/Dense), assigns every node its rule and opens an ONNX Runtime session that
//! exposes every activation but the ReLU outputs, which the pass makes again from their inputs
//! where a rule reads them. [`Explainer::explain`] runs the forward pass, builds the initial
//! relevance from the logits ([`Signal`]) and walks the petgraph in reverse topological order,
//! summing relevance where a tensor fans out; all relevance maps of a signal (target and dual
//! pass) travel through the pass together.

pub mod snapshot;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use lrp_ir::{Graph, NodeId, Op};
pub use lrp_kernels::kernels::Conv3x3;
use lrp_kernels::kernels::{Backends, use_backends};
use lrp_rules::{
    Assignment, BatchNormMode, Bounds, NodeContext, Registry, RuleConfig, Signal, SignalNote,
    ZeroInput,
};
use lrp_runtime::{ActivationViews, Device, ExportOutputs, Forward, RuntimeError};
use ndarray::{Array2, ArrayD, ArrayViewD, Axis, Ix2, IxDyn, ShapeBuilder, Slice};
use rayon::prelude::*;

/// Errors of the relevance pass.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExplainError {
    /// The configuration does not fit the graph.
    #[error(transparent)]
    Config(#[from] lrp_rules::ConfigError),
    /// The graph cannot be canonicalised.
    #[error(transparent)]
    Graph(#[from] lrp_ir::IrError),
    /// The forward pass failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The input or the options are not valid.
    #[error("{0}")]
    Input(String),
    /// A rule failed, returned the wrong shape, produced NaN/Inf, or panicked.
    #[error("node '{node}' ({op}), rule {rule}: {message}")]
    Rule {
        /// The node.
        node: String,
        /// Its op.
        op: &'static str,
        /// The rule's description.
        rule: String,
        /// What went wrong.
        message: String,
    },
}

/// Which class each input is explained for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Targets {
    /// The top-scoring class of each input.
    #[default]
    Top,
    /// One class for every input.
    All(usize),
    /// One class per input.
    Each(Vec<usize>),
}

/// Options of one explanation.
#[derive(Debug, Clone, Default)]
pub struct ExplainOptions {
    /// The target classes.
    pub targets: Targets,
    /// Bounds for bounded (z^B) rules, overriding the configuration's.
    pub bounds: Option<Bounds>,
    /// `max(map, 0)` after combination, overriding the configuration's `relu` when set.
    pub relu: Option<bool>,
    /// Nodes whose relevance to return (their names).
    pub keep: Vec<String>,
    /// The largest relevance tensor, in bytes per relevance map (a two-pass signal's tensors
    /// hold two), the pass makes for several images at once (None: [`DEFAULT_GROUP_BYTES`]).
    /// From the first node where a tensor of the whole batch is larger, the pass runs one group
    /// of images at a time, as many as fit; the result is the same, but freed memory is reused
    /// instead of new memory touched. `Some(usize::MAX)` runs the whole batch at once.
    pub group_bytes: Option<usize>,
    /// How the pass computes large 3×3, stride-1 convolutions and their transposes (None:
    /// [`DEFAULT_CONV3X3`]); the choice changes results by rounding only.
    pub conv3x3: Option<Conv3x3>,
}

/// The default of [`ExplainOptions::conv3x3`]: Winograd's F(4×4, 3×3) (4× fewer products)
/// on all but small outputs, where F(2×2, 3×3) (2.25× fewer).
pub const DEFAULT_CONV3X3: Conv3x3 = Conv3x3::Winograd4;

/// The default of [`ExplainOptions::group_bytes`]: 32 MiB (per relevance map).
pub const DEFAULT_GROUP_BYTES: usize = 32 << 20;

/// The explanation of one batch.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// Relevance at the input: the input batch's shape and layout.
    pub relevance: ArrayD<f32>,
    /// The input relevance of every pass before the signal combines them: `[N·maps, ...]`,
    /// image-major (for two-pass signals the target pass, then the dual pass, of each image).
    pub passes: ArrayD<f32>,
    /// Pre-softmax logits `[N, classes]`.
    pub logits: Array2<f32>,
    /// The target class of each input.
    pub targets: Vec<usize>,
    /// Per node (in topological order of the canonical graph): name and relevance sum per
    /// input and per relevance map (`[N][maps]`), before the maps are combined.
    pub node_sums: Vec<(String, Vec<Vec<f64>>)>,
    /// Sum of the initial relevance per input and map.
    pub initial_sums: Vec<Vec<f64>>,
    /// Σ R_input − Σ R_logits per input and map (what the rules absorbed or created).
    pub conservation_gap: Vec<Vec<f64>>,
    /// Notes per input (e.g. ΣO = 0).
    pub notes: Vec<Vec<SignalNote>>,
    /// Relevance maps kept at the requested nodes, in the order of [`ExplainOptions::keep`]:
    /// name → `[N·maps, ...]`; zeros at a node no relevance reached.
    pub kept: Vec<(String, ArrayD<f32>)>,
    /// Seconds spent in the forward pass.
    pub forward_seconds: f64,
    /// Seconds spent in the relevance pass.
    pub relevance_seconds: f64,
    /// Seconds each node's rule took (including the checks of its result), in the order the
    /// relevance pass first visited them, summed over the groups of images.
    pub node_seconds: Vec<(String, f64)>,
    /// The node from which the pass ran one group of images at a time, and the images a group
    /// held (see [`ExplainOptions::group_bytes`]); None when the whole batch went at once.
    pub groups: Option<(String, usize)>,
}

/// A graph prepared for explanations with one rule configuration.
#[derive(Debug)]
pub struct Explainer {
    graph: Graph,
    config: RuleConfig,
    assignment: Assignment,
    forward: Forward,
    softmax_removed: bool,
    backends: Backends,
    /// What the forward pass keeps of each node's output.
    outputs: Outputs,
}

impl Explainer {
    /// Canonicalises `graph`, assigns the rules of `config` and opens the forward session.
    /// `threads` is ONNX Runtime's intra-op thread count (None: all cores); the relevance
    /// pass's own work runs on the current rayon pool (see `lrp_kernels::set_threads`).
    pub fn new(
        graph: Graph,
        config: RuleConfig,
        registry: &Registry,
        device: Device,
        threads: Option<usize>,
    ) -> Result<Self, ExplainError> {
        let (graph, softmax_removed) = canonicalize(graph, &config)?;
        let assignment = config.assign(&graph, registry)?;
        // Every activation but the ReLU outputs the relevance pass makes again from their
        // inputs (a VGG16 batch of 8 then holds 0.47 GB less, docs/performance.md) and the
        // outputs no rule reads (ONNX Runtime then fuses those nodes with their ReLUs).
        let unread = unread_outputs(&graph, &assignment);
        let rectified = rectified_outputs(&graph, &assignment, &unread);
        let unread: Vec<bool> = unread
            .into_iter()
            .zip(&rectified)
            .map(|(u, r)| u || r.is_some())
            .collect();
        let export = graph
            .topo_order()
            .iter()
            .copied()
            .filter(|&id| !unread[id] && !remade_relu(&graph, id, &unread))
            .collect();
        let forward = Forward::new(&graph, device, ExportOutputs::Selected(export), threads)?;
        // The relevance pass's large f32 products and convolutions run on ONNX Runtime's CPU
        // kernels.
        let backends = match device {
            Device::Cpu => Backends {
                sgemm: Some(Arc::new(lrp_runtime::OrtSgemm::new(threads)?)),
                conv: Some(Arc::new(lrp_runtime::OrtConv::new(threads)?)),
                // `conv3x3` is each explanation's own (`ExplainOptions::conv3x3`)
                ..Backends::default()
            },
            Device::Cuda => Backends::default(),
        };
        Ok(Explainer {
            graph,
            config,
            assignment,
            forward,
            softmax_removed,
            backends,
            outputs: Outputs { unread, rectified },
        })
    }

    /// The canonical graph the relevance pass runs on.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The rule of every node.
    pub fn assignment(&self) -> &Assignment {
        &self.assignment
    }

    /// The configuration.
    pub fn config(&self) -> &RuleConfig {
        &self.config
    }

    /// The names of the nodes of the explained (canonical) graph that match any of the globs
    /// (`*`, `?`, `[...]`), in topological order, for [`ExplainOptions::keep`]. A glob that
    /// matches no node is an error listing the nodes.
    pub fn nodes_matching(&self, globs: &[impl AsRef<str>]) -> Result<Vec<String>, ExplainError> {
        let graph = &self.graph;
        let mut keep = Vec::new();
        for pattern in globs {
            let pattern = pattern.as_ref();
            let glob = globset::Glob::new(pattern)
                .map_err(|e| ExplainError::Input(format!("'{pattern}': {e}")))?
                .compile_matcher();
            let mut any = false;
            for &id in graph.topo_order() {
                let name = &graph.nodes()[id].name;
                if glob.is_match(name) {
                    any = true;
                    if !keep.contains(name) {
                        keep.push(name.clone());
                    }
                }
            }
            if !any {
                let names: Vec<&str> = graph
                    .topo_order()
                    .iter()
                    .map(|&i| graph.nodes()[i].name.as_str())
                    .collect();
                return Err(ExplainError::Input(format!(
                    "'{pattern}' matches no node of the graph explained (BatchNorm layers are folded into their convolutions and a final Softmax is removed); nodes: {}",
                    names.join(", ")
                )));
            }
        }
        Ok(keep)
    }

    /// Whether a final Softmax was removed.
    pub fn softmax_removed(&self) -> bool {
        self.softmax_removed
    }

    /// Explains a batch `[N, ...input shape]`.
    pub fn explain(
        &mut self,
        batch: &ArrayD<f32>,
        opts: &ExplainOptions,
    ) -> Result<Explanation, ExplainError> {
        if let Some((i, v)) = batch.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(ExplainError::Input(format!(
                "the input holds {v} at flat index {i}"
            )));
        }
        if let Some(name) = opts
            .keep
            .iter()
            .find(|k| self.graph.node_id(k.as_str()).is_none())
        {
            return Err(ExplainError::Input(format!(
                "keep: '{name}' is not a node of the graph explained (see Explainer::nodes_matching)"
            )));
        }
        let _backends = use_backends(Backends {
            conv3x3: opts.conv3x3.unwrap_or(DEFAULT_CONV3X3),
            ..self.backends.clone()
        });
        let t0 = Instant::now();
        let Explainer {
            forward,
            graph,
            assignment,
            config,
            outputs,
            ..
        } = self;
        // The pass reads the activations in ONNX Runtime's own buffers, without a copy.
        forward.run_view(batch.view(), |acts| {
            let forward_seconds = t0.elapsed().as_secs_f64();
            relevance_pass(
                graph,
                assignment,
                config,
                outputs,
                acts,
                batch,
                opts,
                forward_seconds,
            )
        })?
    }
}

/// The relevance pass over a forward pass's activations.
#[allow(clippy::too_many_arguments)]
fn relevance_pass(
    g: &Graph,
    assignment: &Assignment,
    config: &RuleConfig,
    outputs: &Outputs,
    acts: &ActivationViews<'_>,
    batch: &ArrayD<f32>,
    opts: &ExplainOptions,
    forward_seconds: f64,
) -> Result<Explanation, ExplainError> {
    let t1 = Instant::now();
    let out_id = g.output_id();
    let out = acts.get(out_id).expect("every node is exported");
    let n = out.shape()[0];
    let classes = out.len() / n;
    let logits: Array2<f32> = out
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order((n, classes))
        .expect("output values")
        .into_dimensionality::<Ix2>()
        .expect("2-D");
    let targets = resolve_targets(&opts.targets, &logits)?;
    let signal: Signal = config.signal;
    let maps = signal.maps();
    let (r0, mut notes) = signal.initial(logits.view(), &targets);
    let initial_sums = row_sums(r0.view().into_dyn(), n, maps);
    let mut shape = vec![n * maps];
    shape.extend_from_slice(g.shape(out_id));
    let mut pending: HashMap<String, Pending> = HashMap::new();
    deposit(
        &mut pending,
        &g.nodes()[out_id].name,
        r0.into_shape_with_order(IxDyn(&shape))
            .expect("logit relevance"),
        Some(initial_sums.clone()),
    );
    let order: Vec<NodeId> = g.topo_order().iter().rev().copied().collect();
    let budget = opts.group_bytes.unwrap_or(DEFAULT_GROUP_BYTES);
    let (split, group) = image_groups(g, &order, n, budget);
    let walk = Walk {
        g,
        assignment,
        outputs,
        maps,
        opts,
    };
    let mut gathered = Gathered::new(g, n, maps, &opts.keep);
    // The nodes before the split see the whole batch; those after it one group of images at a
    // time, each group starting from its rows of the relevance pending at the split.
    walk.run(
        &order[..split],
        acts,
        batch.view(),
        &mut pending,
        0,
        &mut gathered,
    )?;
    if split < order.len() {
        // Every group runs the same layers: each Winograd filter is transformed once.
        let _filters = lrp_kernels::kernels::keep_filters();
        for start in (0..n).step_by(group) {
            let images = start..(start + group).min(n);
            let mut part = pending
                .iter()
                .map(|(name, p)| (name.clone(), p.rows(images.clone(), maps)))
                .collect();
            walk.run(
                &order[split..],
                &acts.images(images.clone()),
                batch.slice_axis(Axis(0), Slice::from(images.clone())),
                &mut part,
                start,
                &mut gathered,
            )?;
            gathered.input(g, &mut part, start, maps);
        }
    } else {
        gathered.input(g, &mut pending, 0, maps);
    }
    let Gathered {
        node_sums,
        node_seconds,
        kept,
        input: (r_input, input_sums),
        ..
    } = gathered;
    let conservation_gap = input_sums
        .iter()
        .zip(&initial_sums)
        .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x - y).collect())
        .collect();
    let relu = opts.relu.unwrap_or(config.relu);
    let passes = r_input.clone();
    let relevance = signal.combine(r_input, relu, &mut notes);
    Ok(Explanation {
        relevance,
        passes,
        logits,
        targets,
        node_sums: g
            .topo_order()
            .iter()
            .map(|&i| (g.nodes()[i].name.clone(), node_sums[i].clone()))
            .collect(),
        initial_sums,
        conservation_gap,
        notes,
        kept: opts.keep.iter().cloned().zip(kept).collect(),
        forward_seconds,
        relevance_seconds: t1.elapsed().as_secs_f64(),
        node_seconds,
        groups: (split < order.len()).then(|| (g.nodes()[order[split]].name.clone(), group)),
    })
}

/// Where the pass starts to run in groups of images, and how many images a group holds: the
/// first node (in `order`) one of whose tensors, for the whole batch and one map, is larger
/// than `budget` bytes, and the most images whose largest tensor from there on fits `budget`
/// (at least one, and fewer than `n`: the split node's own tensor does not fit for all `n`).
/// `(order.len(), n)` when every tensor fits or the batch is one image. The budget is per map
/// so that a two-pass signal runs as many images a group as a one-pass one: the kernels'
/// calls then hold twice the rows, and do more work each (docs/performance.md, thirteenth
/// session).
fn image_groups(g: &Graph, order: &[NodeId], n: usize, budget: usize) -> (usize, usize) {
    // Bytes per image and map of the largest relevance tensor a node's rule takes or returns.
    let per_image = |id: NodeId| -> usize {
        let node = &g.nodes()[id];
        let elements = std::iter::once(g.shape(id))
            .chain(node.inputs.iter().filter_map(|s| g.tensor_shape(s)))
            .map(|s| s.iter().product::<usize>())
            .max()
            .unwrap_or(0);
        elements * std::mem::size_of::<f32>()
    };
    let Some(split) = order
        .iter()
        .position(|&id| per_image(id).saturating_mul(n) > budget)
        .filter(|_| n > 1)
    else {
        return (order.len(), n);
    };
    let largest = order[split..]
        .iter()
        .map(|&id| per_image(id))
        .max()
        .unwrap_or(1);
    (split, (budget / largest.max(1)).clamp(1, n))
}

/// What one walk over nodes needs besides the activations.
struct Walk<'a> {
    g: &'a Graph,
    assignment: &'a Assignment,
    outputs: &'a Outputs,
    maps: usize,
    opts: &'a ExplainOptions,
}

/// What the walks gather for the whole batch: per-node sums and rule times, the kept maps and
/// the input's relevance, each written at the rows of the images a walk covered.
struct Gathered {
    /// Per node id: sums per image and map.
    node_sums: Vec<Vec<Vec<f64>>>,
    /// Seconds per node, in the order the nodes were first visited.
    node_seconds: Vec<(String, f64)>,
    /// Index of each visited node in `node_seconds`.
    seconds_at: HashMap<NodeId, usize>,
    /// The maps of [`ExplainOptions::keep`], in its order.
    kept: Vec<ArrayD<f32>>,
    /// The input's relevance `[N·maps, ...]` and its sums.
    input: (ArrayD<f32>, Vec<Vec<f64>>),
}

impl Gathered {
    fn new(g: &Graph, n: usize, maps: usize, keep: &[String]) -> Self {
        let zeros = |s: &[usize]| {
            let mut shape = vec![n * maps];
            shape.extend_from_slice(s);
            ArrayD::zeros(IxDyn(&shape))
        };
        Gathered {
            node_sums: vec![vec![vec![0.0; maps]; n]; g.nodes().len()],
            node_seconds: Vec::with_capacity(g.nodes().len()),
            seconds_at: HashMap::new(),
            kept: keep
                .iter()
                .map(|k| zeros(g.tensor_shape(k).expect("checked to be a node")))
                .collect(),
            input: (zeros(&g.input().shape), vec![vec![0.0; maps]; n]),
        }
    }

    /// Adds `seconds` to node `id`'s time.
    fn time(&mut self, id: NodeId, name: &str, seconds: f64) {
        let at = *self.seconds_at.entry(id).or_insert_with(|| {
            self.node_seconds.push((name.to_string(), 0.0));
            self.node_seconds.len() - 1
        });
        self.node_seconds[at].1 += seconds;
    }

    /// Writes the relevance that reached the graph input in a walk from image `start` on.
    fn input(
        &mut self,
        g: &Graph,
        pending: &mut HashMap<String, Pending>,
        start: usize,
        maps: usize,
    ) {
        if let Some(Pending { r, sums }) = pending.remove(&g.input().name) {
            let n = r.shape()[0] / maps;
            let sums = sums.unwrap_or_else(|| row_sums(r.view(), n, maps));
            write_rows(&mut self.input.0, &r, start * maps);
            self.input.1[start..start + n].clone_from_slice(&sums);
        }
    }
}

/// Copies `part` into `whole` from row `at` on.
fn write_rows(whole: &mut ArrayD<f32>, part: &ArrayD<f32>, at: usize) {
    let rows = part.shape()[0];
    whole
        .slice_axis_mut(Axis(0), Slice::from(at..at + rows))
        .assign(part);
}

impl Walk<'_> {
    /// Runs the rules of `nodes` (in this order) on the images from `start` on whose
    /// activations are `acts` and input `batch`, taking the relevance from `pending` and
    /// leaving there what reaches tensors outside `nodes`.
    fn run(
        &self,
        nodes: &[NodeId],
        acts: &ActivationViews<'_>,
        batch: ArrayViewD<'_, f32>,
        pending: &mut HashMap<String, Pending>,
        start: usize,
        gathered: &mut Gathered,
    ) -> Result<(), ExplainError> {
        let Walk {
            g,
            assignment,
            outputs: Outputs { unread, rectified },
            maps,
            opts,
        } = *self;
        let n = acts.batch();
        // What a rule sees of an output the forward pass left out: its shape, NaN values.
        let not_kept = |id: NodeId| -> ArrayViewD<'static, f32> {
            let mut shape = vec![n];
            shape.extend_from_slice(g.shape(id));
            let strides = IxDyn(&vec![0; shape.len()]);
            ArrayViewD::from_shape(
                IxDyn(&shape).strides(strides),
                std::slice::from_ref(&NOT_KEPT),
            )
            .expect("one value repeated")
        };
        let input_name = &g.input().name;
        let mut remade: HashMap<NodeId, ArrayD<f32>> = HashMap::new();
        for &id in nodes {
            let node = &g.nodes()[id];
            let t_node = Instant::now();
            // A remade ReLU output lives from its first consumer (visited earlier) to its node.
            let remade_here = remade.remove(&id);
            let Some(Pending { r, sums }) = pending.remove(&node.name) else {
                continue;
            };
            let own_output = match acts.get(id) {
                Some(_) => None,
                None if unread[id] => None,
                None => Some(remade_here.unwrap_or_else(|| remake_relu(acts, g, id))),
            };
            for s in &node.inputs {
                if let Some(sid) = g.node_id(s)
                    && acts.get(sid).is_none()
                    && !unread[sid]
                {
                    remade
                        .entry(sid)
                        .or_insert_with(|| remake_relu(acts, g, sid));
                }
            }
            let sums = sums.unwrap_or_else(|| row_sums(r.view(), n, maps));
            gathered.node_sums[id][start..start + n].clone_from_slice(&sums);
            if let Some(k) = opts.keep.iter().position(|k| *k == node.name) {
                write_rows(&mut gathered.kept[k], &r, start * maps);
            }
            let inputs: Vec<_> = node
                .inputs
                .iter()
                .map(|s| {
                    if s == input_name {
                        batch.view()
                    } else {
                        let sid = g.node_id(s).expect("validated");
                        match acts.get(sid) {
                            Some(a) => a.view(),
                            None if unread[sid] => not_kept(sid),
                            None => remade[&sid].view(),
                        }
                    }
                })
                .collect();
            let ctx = NodeContext {
                graph: g,
                id,
                inputs,
                output: match (&own_output, acts.get(id), rectified[id]) {
                    (Some(a), _, _) => a.view(),
                    (None, Some(a), _) => a.view(),
                    (None, None, Some(relu)) => acts
                        .get(relu)
                        .expect("a rectified output's ReLU is exported")
                        .view(),
                    (None, None, None) => not_kept(id),
                },
                maps,
                bounds: opts.bounds.as_ref(),
            };
            let rule = assignment.rule(id);
            // Relevance that passes unchanged (ReLU, Flatten) moves on without a copy.
            // (A plugin whose answer panics is simply called.)
            if let [src] = node.inputs.as_slice()
                && std::panic::catch_unwind(AssertUnwindSafe(|| rule.moves_unchanged(&ctx)))
                    .unwrap_or(false)
            {
                let mut want = vec![n * maps];
                want.extend_from_slice(g.tensor_shape(src).expect("validated"));
                if r.len() == want.iter().product::<usize>() {
                    let r = if r.is_standard_layout() {
                        r
                    } else {
                        r.as_standard_layout().into_owned()
                    };
                    let rin = r
                        .into_shape_with_order(IxDyn(&want))
                        .expect("standard layout, same length");
                    deposit(pending, src, rin, Some(sums));
                    gathered.time(id, &node.name, t_node.elapsed().as_secs_f64());
                    continue;
                }
            }
            let fail = |message: String| ExplainError::Rule {
                node: node.name.clone(),
                op: node.op.kind(),
                rule: rule.describe(),
                message,
            };
            let outs = std::panic::catch_unwind(AssertUnwindSafe(|| rule.relevance_owned(&ctx, r)))
                .map_err(|p| fail(format!("the rule panicked: {}", panic_text(&p))))?
                .map_err(fail)?;
            if outs.len() != node.inputs.len() {
                return Err(fail(format!(
                    "returned {} relevance arrays for {} inputs",
                    outs.len(),
                    node.inputs.len()
                )));
            }
            for (k, (src, rin)) in node.inputs.iter().zip(outs).enumerate() {
                let mut want = vec![n * maps];
                want.extend_from_slice(g.tensor_shape(src).expect("validated"));
                if rin.shape() != want.as_slice() {
                    return Err(fail(format!(
                        "returned shape {:?} for input {k} ('{src}'), expected {want:?}",
                        rin.shape()
                    )));
                }
                // The sums are finite exactly when every value is (f64 sums of f32 values
                // cannot overflow), so only a non-finite sum needs the search for the value.
                let sums = row_sums(rin.view(), n, maps);
                if sums.iter().flatten().any(|v| !v.is_finite())
                    && let Some(v) = first_non_finite(&rin)
                {
                    return Err(fail(format!(
                        "produced {v} in the relevance of input {k} ('{src}')"
                    )));
                }
                deposit(pending, src, rin, Some(sums));
            }
            gathered.time(id, &node.name, t_node.elapsed().as_secs_f64());
        }
        Ok(())
    }
}

/// What the forward pass keeps of each node's output.
#[derive(Debug)]
struct Outputs {
    /// Per node: whether the forward pass leaves its output out ([`unread_outputs`],
    /// [`rectified_outputs`]).
    unread: Vec<bool>,
    /// Per node: the ReLU whose output stands for the node's own ([`rectified_outputs`]).
    rectified: Vec<Option<NodeId>>,
}

/// Per node: whether the relevance reaching its output is zero wherever the output's forward
/// value is zero, as the rules of its consumers show ([`Rule::zero_input_relevance`]). False for
/// the graph's output (the initial relevance), true for an output nothing consumes.
///
/// [`Rule::zero_input_relevance`]: lrp_rules::Rule::zero_input_relevance
fn zero_where_zero(g: &Graph, assignment: &Assignment) -> Vec<bool> {
    let mut zero = vec![false; g.nodes().len()];
    for &id in g.topo_order().iter().rev() {
        zero[id] = id != g.output_id()
            && g.consumers(id).iter().all(|&(c, _)| {
                match assignment.rule(c).zero_input_relevance(&g.nodes()[c].op) {
                    ZeroInput::Zero => true,
                    ZeroInput::IfOutput => zero[c],
                    ZeroInput::Unknown => false,
                }
            });
    }
    zero
}

/// Per node: the ReLU whose output the forward pass keeps in place of the node's, where the
/// node's rule reads its output but accepts `max(z, 0)` instead
/// ([`Rule::accepts_rectified_output`]), every consumer of the node is a one-input ReLU whose
/// rule does not read its input, and the relevance there is zero wherever the ReLU's output
/// is ([`zero_where_zero`], with the ReLU's rule moving relevance position by position), and
/// whose output the forward pass keeps (not `unread`: a ReLU followed by another). ONNX Runtime
/// then fuses the node with its ReLU.
///
/// [`Rule::accepts_rectified_output`]: lrp_rules::Rule::accepts_rectified_output
fn rectified_outputs(g: &Graph, assignment: &Assignment, unread: &[bool]) -> Vec<Option<NodeId>> {
    let zero = zero_where_zero(g, assignment);
    (0..g.nodes().len())
        .map(|id| {
            let rule = assignment.rule(id);
            let consumers = g.consumers(id);
            let relu_like = |c: NodeId| {
                let (node, rule) = (&g.nodes()[c], assignment.rule(c));
                matches!(node.op, Op::Relu)
                    && !unread[c]
                    && node.inputs.len() == 1
                    && !rule.reads_inputs()
                    && rule.zero_input_relevance(&node.op) == ZeroInput::IfOutput
                    && zero[c]
            };
            (id != g.output_id()
                && rule.reads_output()
                && rule.accepts_rectified_output()
                && !consumers.is_empty()
                && consumers.iter().all(|&(c, _)| relu_like(c)))
            .then(|| consumers[0].0)
        })
        .collect()
}

/// The value of every element of an output the forward pass left out ([`unread_outputs`]).
static NOT_KEPT: f32 = f32::NAN;

/// Per node: whether the forward pass leaves its output out because nothing reads its values:
/// its rule does not ([`Rule::reads_output`]), it is not the graph's output, and it goes only
/// to ReLUs whose rules do not read their inputs ([`Rule::reads_inputs`]). The forward pass
/// keeps those ReLUs' outputs instead (what the next layers read), and ONNX Runtime fuses the
/// node with them.
fn unread_outputs(g: &Graph, assignment: &Assignment) -> Vec<bool> {
    (0..g.nodes().len())
        .map(|id| {
            let consumers = g.consumers(id);
            id != g.output_id()
                && !consumers.is_empty()
                && !assignment.rule(id).reads_output()
                && consumers.iter().all(|&(c, _)| {
                    matches!(g.nodes()[c].op, Op::Relu)
                        && g.nodes()[c].inputs.len() == 1
                        && !assignment.rule(c).reads_inputs()
                })
        })
        .collect()
}

/// Whether node `id` is a ReLU whose output the forward pass does not export: one that reads
/// another node's exported output (not one left out, see `unread`) and is not the graph's
/// output. The relevance pass makes it again ([`remake_relu`]) where a rule reads it.
fn remade_relu(g: &Graph, id: NodeId, unread: &[bool]) -> bool {
    let node = &g.nodes()[id];
    matches!(node.op, Op::Relu)
        && id != g.output_id()
        && node.inputs.len() == 1
        && g.node_id(&node.inputs[0])
            .is_some_and(|src| !unread[src] && !remade_relu(g, src, unread))
}

/// `max(x, 0)` of the exported input of ReLU node `id` (see [`remade_relu`]), in parallel.
fn remake_relu(acts: &ActivationViews<'_>, g: &Graph, id: NodeId) -> ArrayD<f32> {
    let src = g
        .node_id(&g.nodes()[id].inputs[0])
        .expect("a node's output");
    let x = acts
        .get(src)
        .expect("a remade ReLU reads an exported output")
        .as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    let out = lrp_kernels::kernels::par_rows_with(1, xs.len(), |_, span, out| {
        out.extend(xs[span].iter().map(|v| v.max(0.0)))
    });
    ArrayD::from_shape_vec(x.raw_dim(), out).expect("same length")
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Relevance that has arrived at a tensor, with its [`row_sums`] while it came from one
/// consumer only.
struct Pending {
    r: ArrayD<f32>,
    sums: Option<Vec<Vec<f64>>>,
}

impl Pending {
    /// The rows of images `images` (of `maps` maps each).
    fn rows(&self, images: std::ops::Range<usize>, maps: usize) -> Pending {
        Pending {
            r: self
                .r
                .slice_axis(Axis(0), Slice::from(images.start * maps..images.end * maps))
                .to_owned(),
            sums: self.sums.as_ref().map(|s| s[images].to_vec()),
        }
    }
}

/// Adds `rin` (whose row sums are `sums`, if known) to the relevance pending at `src`.
fn deposit(
    pending: &mut HashMap<String, Pending>,
    src: &str,
    rin: ArrayD<f32>,
    sums: Option<Vec<Vec<f64>>>,
) {
    match pending.get_mut(src) {
        Some(acc) => {
            acc.r += &rin;
            // The sum of the added arrays is summed again when it is taken.
            acc.sums = None;
        }
        None => {
            pending.insert(src.to_string(), Pending { r: rin, sums });
        }
    }
}

/// A value of `r` that is NaN or infinite, if there is one (searched in parallel).
fn first_non_finite(r: &ArrayD<f32>) -> Option<f32> {
    let r = r.as_standard_layout();
    r.as_slice()
        .expect("standard layout")
        .par_chunks(1 << 16)
        .find_map_first(|c| c.iter().copied().find(|v| !v.is_finite()))
}

/// Sums of each row in f64, as `[N][maps]`: pieces of rows in parallel, each in eight
/// interleaved partial sums, added up in a fixed order (the same result on every run).
fn row_sums(r: ArrayViewD<'_, f32>, n: usize, maps: usize) -> Vec<Vec<f64>> {
    const PIECE: usize = 1 << 16;
    let r = r.as_standard_layout();
    let s = r.as_slice().expect("standard layout");
    let rows = n * maps;
    let len = s.len() / rows.max(1);
    let sums: Vec<f64> = if len == 0 {
        vec![0.0; rows]
    } else {
        let per_row = len.div_ceil(PIECE);
        let pieces: Vec<f64> = s
            .par_chunks(len)
            .flat_map(|row| row.par_chunks(PIECE).map(sum_f64))
            .collect();
        pieces.chunks(per_row).map(|p| p.iter().sum()).collect()
    };
    (0..n)
        .map(|i| sums[i * maps..(i + 1) * maps].to_vec())
        .collect()
}

/// `Σ v` in f64, in eight interleaved partial sums (which vectorise).
fn sum_f64(v: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f64::from(x);
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&x| f64::from(x)).sum();
    acc.iter().sum::<f64>() + tail
}

fn resolve_targets(t: &Targets, logits: &Array2<f32>) -> Result<Vec<usize>, ExplainError> {
    let (n, c) = logits.dim();
    let v = match t {
        Targets::Top => logits
            .outer_iter()
            .map(|row| {
                row.iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                        if v > bv { (i, v) } else { (bi, bv) }
                    })
                    .0
            })
            .collect(),
        Targets::All(k) => vec![*k; n],
        Targets::Each(v) => {
            if v.len() != n {
                return Err(ExplainError::Input(format!(
                    "{} targets given for {n} inputs (give one, or one per input)",
                    v.len()
                )));
            }
            v.clone()
        }
    };
    if let Some(&bad) = v.iter().find(|&&k| k >= c) {
        return Err(ExplainError::Input(format!(
            "target class {bad} is out of range: the model has {c} classes (0..{})",
            c - 1
        )));
    }
    Ok(v)
}

/// The graph the pass runs on: the final Softmax removed and, unless the configuration says
/// `batch_norm: Pass`, BatchNorm folded into the preceding Conv/Dense.
pub fn canonicalize(graph: Graph, config: &RuleConfig) -> Result<(Graph, bool), lrp_ir::IrError> {
    let (graph, removed) = lrp_ir::canon::strip_softmax(graph)?;
    let graph = if config.conventions.batch_norm == BatchNormMode::Pass {
        graph
    } else {
        lrp_ir::canon::fold_batchnorm(graph)?
    };
    Ok((graph, removed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_sums_per_image_and_map_in_f64() {
        // 2 images × 2 maps, rows of 3 values; 1e8 + 1 is not an f32 sum, but is an f64 one.
        let r = ArrayD::from_shape_vec(
            IxDyn(&[4, 3]),
            vec![
                1e8f32, 1.0, -1e8, 1.0, 2.0, 3.0, 0.5, 0.25, 0.25, -1.0, -2.0, 0.0,
            ],
        )
        .unwrap();
        assert_eq!(
            row_sums(r.view(), 2, 2),
            vec![vec![1.0, 6.0], vec![1.0, -3.0]]
        );
    }

    #[test]
    fn long_rows_sum_in_pieces_the_same_on_every_run() {
        // Rows longer than one parallel piece, with a tail that is not a multiple of 8.
        let len = (1 << 17) + 5;
        let values: Vec<f32> = (0..2 * len).map(|i| ((i % 7) as f32 - 3.0) * 0.1).collect();
        let r = ArrayD::from_shape_vec(IxDyn(&[2, len]), values.clone()).unwrap();
        let exact: Vec<f64> = values
            .chunks(len)
            .map(|row| row.iter().map(|&v| f64::from(v)).sum())
            .collect();
        let sums = row_sums(r.view(), 2, 1);
        for (s, e) in sums.iter().zip(&exact) {
            assert!((s[0] - e).abs() < 1e-9, "{} vs {e}", s[0]);
        }
        for _ in 0..5 {
            assert_eq!(row_sums(r.view(), 2, 1), sums);
        }
        assert_eq!(sum_f64(&[1.0, 2.0, 3.0]), 6.0);
        assert_eq!(sum_f64(&[]), 0.0);
    }
}
