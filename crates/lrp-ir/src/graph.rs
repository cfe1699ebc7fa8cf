//! The serialised graph (`GraphDef`, RON) and the validated, shape-inferred graph (`Graph`) on a
//! petgraph `StableDiGraph`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use ndarray::ArrayViewD;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use serde::{Deserialize, Serialize};

use crate::error::IrError;
use crate::op::{Op, ParamShapes, Shape};
use crate::preprocess::Preprocess;
use crate::weights::Weights;

/// The version of the RON graph format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// The serialised form of a graph: what a `.ron` file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphDef {
    /// Format version; must equal [`FORMAT_VERSION`].
    pub format: u32,
    /// A name for the model.
    pub name: String,
    /// The `.safetensors` sidecar, relative to the `.ron` file's folder.
    pub weights: String,
    /// The graph's one input.
    pub input: InputDef,
    /// The node whose output is the model's output (logits, or probabilities if it ends in a
    /// Softmax).
    pub output: String,
    /// The nodes, in any order (the graph is sorted topologically on load).
    pub nodes: Vec<NodeDef>,
    /// Class names, one per output class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
}

/// The graph input: its name, per-sample shape, layout and optional image preprocessing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputDef {
    /// The tensor name nodes refer to.
    pub name: String,
    /// Per-sample shape (the batch axis, always first and dynamic, is left out).
    pub shape: Vec<usize>,
    /// How the axes of image inputs are ordered.
    pub layout: Layout,
    /// How image files become input tensors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocess: Option<Preprocess>,
}

/// Axis order of an image input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(clippy::upper_case_acronyms)]
pub enum Layout {
    /// Channels first (ONNX, PyTorch).
    NCHW,
    /// Channels last (Keras, TensorFlow).
    NHWC,
    /// Not an image: a feature vector or other tensor.
    Other,
}

/// One node of the serialised graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeDef {
    /// Unique name; also the name of the node's output tensor.
    pub name: String,
    /// The operator.
    pub op: Op,
    /// Names of the input tensors: the graph input's name or other nodes' names.
    pub inputs: Vec<String>,
    /// Parameter name (`weight`, `bias`, …) → tensor key in the weights sidecar.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
}

/// Index of a node in [`Graph::nodes`].
pub type NodeId = usize;

/// A validated graph: nodes sorted topologically, shapes inferred, weights checked.
#[derive(Debug, Clone)]
pub struct Graph {
    def: GraphDef,
    weights: Weights,
    dag: StableDiGraph<NodeId, usize>,
    index: Vec<NodeIndex>,
    by_name: HashMap<String, NodeId>,
    order: Vec<NodeId>,
    shapes: Vec<Shape>,
}

struct NodeParams<'a> {
    node: &'a NodeDef,
    weights: &'a Weights,
}

impl ParamShapes for NodeParams<'_> {
    fn param_shape(&self, name: &str) -> Option<&[usize]> {
        let key = self.node.params.get(name)?;
        self.weights.shape(key)
    }
}

impl Graph {
    /// Validates `def` against `weights` and builds the graph: rejects a wrong format version,
    /// duplicate or empty names, dangling inputs, cycles, unknown or missing parameters, and
    /// shape mismatches, each error naming the node.
    pub fn new(def: GraphDef, weights: Weights) -> Result<Self, IrError> {
        if def.format != FORMAT_VERSION {
            return Err(IrError::graph(format!(
                "unsupported graph format {} (this build reads format {FORMAT_VERSION})",
                def.format
            )));
        }
        if def.input.name.is_empty() {
            return Err(IrError::graph("the input has an empty name"));
        }
        let mut by_name = HashMap::new();
        for (i, n) in def.nodes.iter().enumerate() {
            if n.name.is_empty() {
                return Err(IrError::graph(format!("node #{i} has an empty name")));
            }
            if n.name == def.input.name {
                return Err(IrError::node(
                    &n.name,
                    n.op.kind(),
                    "has the same name as the graph input",
                ));
            }
            if by_name.insert(n.name.clone(), i).is_some() {
                return Err(IrError::node(&n.name, n.op.kind(), "duplicate node name"));
            }
        }
        let mut dag = StableDiGraph::with_capacity(def.nodes.len(), def.nodes.len());
        let index: Vec<NodeIndex> = (0..def.nodes.len()).map(|i| dag.add_node(i)).collect();
        for (i, n) in def.nodes.iter().enumerate() {
            if n.inputs.is_empty() {
                return Err(IrError::node(&n.name, n.op.kind(), "has no inputs"));
            }
            for (slot, src) in n.inputs.iter().enumerate() {
                if *src == def.input.name {
                    continue;
                }
                let Some(&j) = by_name.get(src) else {
                    return Err(IrError::node(
                        &n.name,
                        n.op.kind(),
                        format!(
                            "input {slot} refers to '{src}', which is neither a node nor the graph input"
                        ),
                    ));
                };
                dag.add_edge(index[j], index[i], slot);
            }
            let known: Vec<&str> = n.op.params().iter().map(|p| p.name).collect();
            for (pname, key) in &n.params {
                if !known.contains(&pname.as_str()) {
                    return Err(IrError::node(
                        &n.name,
                        n.op.kind(),
                        format!(
                            "unknown parameter '{pname}' (this op takes: {})",
                            list_or_none(&known)
                        ),
                    ));
                }
                if weights.get(key).is_none() {
                    return Err(IrError::node(
                        &n.name,
                        n.op.kind(),
                        format!(
                            "parameter '{pname}' refers to tensor '{key}', which is not in the weights file"
                        ),
                    ));
                }
            }
        }
        let order = stable_toposort(&dag, &index).map_err(|i| {
            let n = &def.nodes[i];
            IrError::node(&n.name, n.op.kind(), "is part of a cycle")
        })?;
        if def.input.shape.is_empty() || def.input.shape.contains(&0) {
            return Err(IrError::graph(format!(
                "input '{}' has an empty or zero-sized shape {:?}",
                def.input.name, def.input.shape
            )));
        }
        let mut shapes: Vec<Option<Shape>> = vec![None; def.nodes.len()];
        for &i in &order {
            let n = &def.nodes[i];
            let ins: Vec<&[usize]> = n
                .inputs
                .iter()
                .map(|src| match by_name.get(src) {
                    Some(&j) => shapes[j].as_deref().expect("topological order"),
                    None => def.input.shape.as_slice(),
                })
                .collect();
            let shape =
                n.op.infer_shape(
                    &ins,
                    &NodeParams {
                        node: n,
                        weights: &weights,
                    },
                )
                .map_err(|m| IrError::node(&n.name, n.op.kind(), m))?;
            shapes[i] = Some(shape);
        }
        if !by_name.contains_key(&def.output) {
            return Err(IrError::graph(format!(
                "the output '{}' is not a node",
                def.output
            )));
        }
        let shapes: Vec<Shape> = shapes
            .into_iter()
            .map(|s| s.expect("every node visited"))
            .collect();
        if let Some(labels) = &def.labels {
            let out = &shapes[by_name[&def.output]];
            if out.len() != 1 || out[0] != labels.len() {
                return Err(IrError::graph(format!(
                    "{} labels given, but the output has per-sample shape {out:?}",
                    labels.len()
                )));
            }
        }
        if let Some(p) = &def.input.preprocess {
            p.check_for(&def.input).map_err(IrError::graph)?;
        }
        Ok(Graph {
            def,
            weights,
            dag,
            index,
            by_name,
            order,
            shapes,
        })
    }

    /// Reads a `.ron` graph and its weights sidecar, then validates it as [`Graph::new`] does.
    pub fn load(path: &Path) -> Result<Self, IrError> {
        let text = std::fs::read_to_string(path).map_err(|source| IrError::Io {
            path: path.to_owned(),
            action: "cannot read",
            source,
        })?;
        let def = parse_ron(&text, path)?;
        let wpath = resolve_sidecar(path, &def.weights);
        let weights = Weights::load(&wpath)?;
        Graph::new(def, weights).map_err(|e| e.with_path(path))
    }

    /// Writes the graph as `path` (RON) and its weights as the sidecar `path` with the extension
    /// `.safetensors`, both atomically; the RON's `weights` field is set to the sidecar's name.
    pub fn save(&mut self, path: &Path) -> Result<(), IrError> {
        let wpath = path.with_extension("safetensors");
        let wname = wpath
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.def.weights = wname;
        self.weights.save(&wpath)?;
        let text = to_ron(&self.def);
        crate::fsutil::write_atomic(path, text.as_bytes()).map_err(|source| IrError::Io {
            path: path.to_owned(),
            action: "cannot write",
            source,
        })
    }

    /// The serialised form.
    pub fn def(&self) -> &GraphDef {
        &self.def
    }

    /// The weights.
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// Consumes the graph, returning its parts (to edit and rebuild it).
    pub fn into_parts(self) -> (GraphDef, Weights) {
        (self.def, self.weights)
    }

    /// The nodes, in file order; a [`NodeId`] indexes this slice.
    pub fn nodes(&self) -> &[NodeDef] {
        &self.def.nodes
    }

    /// The node ids in topological order (every node after its inputs).
    pub fn topo_order(&self) -> &[NodeId] {
        &self.order
    }

    /// The id of the node called `name`.
    pub fn node_id(&self, name: &str) -> Option<NodeId> {
        self.by_name.get(name).copied()
    }

    /// The per-sample output shape of node `id`.
    pub fn shape(&self, id: NodeId) -> &[usize] {
        &self.shapes[id]
    }

    /// The per-sample shape of a tensor: a node's output or the graph input.
    pub fn tensor_shape(&self, name: &str) -> Option<&[usize]> {
        if name == self.def.input.name {
            return Some(&self.def.input.shape);
        }
        self.node_id(name).map(|i| self.shape(i))
    }

    /// The graph input.
    pub fn input(&self) -> &InputDef {
        &self.def.input
    }

    /// The output node's id.
    pub fn output_id(&self) -> NodeId {
        self.by_name[&self.def.output]
    }

    /// Class labels, if the graph has them.
    pub fn labels(&self) -> Option<&[String]> {
        self.def.labels.as_deref()
    }

    /// Parameter `name` of node `id` (e.g. `"weight"`), if it has one.
    pub fn param(&self, id: NodeId, name: &str) -> Option<ArrayViewD<'_, f32>> {
        let key = self.def.nodes[id].params.get(name)?;
        self.weights.get(key)
    }

    /// The ids of the nodes that read node `id`'s output, with the input slot they read it at.
    pub fn consumers(&self, id: NodeId) -> Vec<(NodeId, usize)> {
        let mut out: Vec<(NodeId, usize)> = self
            .dag
            .edges_directed(self.index[id], petgraph::Direction::Outgoing)
            .map(|e| (self.dag[petgraph::visit::EdgeRef::target(&e)], *e.weight()))
            .collect();
        out.sort_unstable();
        out
    }

    /// The petgraph view: node weights are [`NodeId`]s, edge weights the consumer's input slot.
    pub fn petgraph(&self) -> &StableDiGraph<NodeId, usize> {
        &self.dag
    }

    /// Replaces the preprocessing recorded for the input.
    pub fn set_preprocess(&mut self, p: Option<Preprocess>) -> Result<(), IrError> {
        if let Some(p) = &p {
            p.check_for(&self.def.input).map_err(IrError::graph)?;
        }
        self.def.input.preprocess = p;
        Ok(())
    }

    /// Replaces the class labels; their number must match the output size.
    pub fn set_labels(&mut self, labels: Option<Vec<String>>) -> Result<(), IrError> {
        if let Some(l) = &labels {
            let out = self.shape(self.output_id());
            if out.len() != 1 || out[0] != l.len() {
                return Err(IrError::graph(format!(
                    "{} labels given, but the output has per-sample shape {out:?}",
                    l.len()
                )));
            }
        }
        self.def.labels = labels;
        Ok(())
    }
}

/// Topological order that keeps file order wherever the edges allow (Kahn's algorithm, always
/// taking the lowest-numbered ready node). On a cycle, returns a node on or behind it.
fn stable_toposort(
    dag: &StableDiGraph<NodeId, usize>,
    index: &[NodeIndex],
) -> Result<Vec<NodeId>, NodeId> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut indegree: Vec<usize> = index
        .iter()
        .map(|&ix| {
            dag.edges_directed(ix, petgraph::Direction::Incoming)
                .count()
        })
        .collect();
    let mut ready: BinaryHeap<Reverse<NodeId>> = (0..index.len())
        .filter(|&i| indegree[i] == 0)
        .map(Reverse)
        .collect();
    let mut order = Vec::with_capacity(index.len());
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for e in dag.edges_directed(index[i], petgraph::Direction::Outgoing) {
            let j = dag[petgraph::visit::EdgeRef::target(&e)];
            indegree[j] -= 1;
            if indegree[j] == 0 {
                ready.push(Reverse(j));
            }
        }
    }
    if order.len() == index.len() {
        Ok(order)
    } else {
        Err((0..index.len())
            .find(|&i| indegree[i] > 0)
            .expect("some node was not reached"))
    }
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// The sidecar path: `weights` relative to the folder of `graph_path`.
pub fn resolve_sidecar(graph_path: &Path, weights: &str) -> PathBuf {
    match graph_path.parent() {
        Some(dir) => dir.join(weights),
        None => PathBuf::from(weights),
    }
}

/// Parses RON text as a [`GraphDef`]; errors carry the file, line and column.
pub fn parse_ron(text: &str, path: &Path) -> Result<GraphDef, IrError> {
    // The version first, so that a file of another format version gets that error rather than
    // one about fields this version does not know.
    #[derive(Deserialize)]
    struct Version {
        format: u32,
    }
    if let Ok(v) = ron::Options::default().from_str::<Version>(text)
        && v.format != FORMAT_VERSION
    {
        return Err(IrError::Invalid {
            path: Some(path.to_owned()),
            node: None,
            op: None,
            message: format!(
                "unsupported graph format {} (this build reads format {FORMAT_VERSION})",
                v.format
            ),
        });
    }
    ron::Options::default()
        .from_str::<GraphDef>(text)
        .map_err(|e| IrError::Parse {
            path: path.to_owned(),
            line: e.span.start.line,
            col: e.span.start.col,
            message: e.code.to_string(),
        })
}

/// Serialises a [`GraphDef`] as the canonical, pretty RON text (what [`Graph::save`] writes).
pub fn to_ron(def: &GraphDef) -> String {
    let config = ron::ser::PrettyConfig::new()
        .depth_limit(3)
        .indentor("    ")
        .new_line("\n");
    let mut s = ron::ser::to_string_pretty(def, config).expect("a GraphDef always serialises");
    s.push('\n');
    s
}

impl Graph {
    /// Renames the graph.
    pub fn set_name(&mut self, name: String) {
        self.def.name = name;
    }
}
