//! Rule configurations (RON): which rule each node gets, the initial signal and the
//! conventions. Presets in `rules/` are such files.
//!
//! ```ron
//! (
//!     name: "sglrp",
//!     signal: Sglrp(target_offset: 1e-8, head_relu: true),
//!     conventions: (stabilizer: ZeroGuard(1e-7)),
//!     rules: [
//!         (select: FirstLayer, rule: ZBox(low: -1.0, high: 1.0)),
//!         (select: Op(Conv), rule: AlphaBeta(alpha: 1.0, beta: 0.0, bias: Full)),
//!     ],
//! )
//! ```

use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;

use lrp_ir::{Graph, NodeId, Op};
use lrp_kernels::Stabilizer;
use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::registry::{Defaults, ParamKind, ParamValue, Params, Registry};
use crate::rule::Rule;
use crate::signal::Signal;
use crate::structural::{
    AddRule, AvgPoolRule, BatchNormRule, MaxPoolRouting, MaxPoolRule, Move, Pass, Split,
};

/// A rule configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// The method's name.
    #[serde(default)]
    pub name: String,
    /// What the configuration is.
    #[serde(default)]
    pub description: String,
    /// The initial relevance at the logits.
    #[serde(default)]
    pub signal: Signal,
    /// `max(map, 0)` after the signal's passes are combined.
    #[serde(default)]
    pub relu: bool,
    /// Conventions for layers no entry covers.
    #[serde(default)]
    pub conventions: Conventions,
    /// Rule entries: the first whose selector matches a node gives its rule.
    #[serde(default)]
    pub rules: Vec<Entry>,
}

/// How layers that no entry covers are treated.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Conventions {
    /// MaxPool and GlobalMaxPool routing.
    pub max_pool: MaxPoolRouting,
    /// AvgPool and GlobalAvgPool.
    pub avg_pool: Split,
    /// Add (residual connections).
    pub add: Split,
    /// BatchNorm: folded into the preceding Conv/Dense where possible, else this rule.
    pub batch_norm: BatchNormMode,
    /// Stabiliser of the rules above and of rules that do not name one.
    pub stabilizer: Stabilizer,
}

impl Default for Conventions {
    fn default() -> Self {
        Conventions {
            max_pool: MaxPoolRouting::WinnerTakeAll,
            avg_pool: Split::Proportional,
            add: Split::Proportional,
            batch_norm: BatchNormMode::Fold,
            stabilizer: Stabilizer::SignEpsilon(1e-6),
        }
    }
}

/// What happens to BatchNorm layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum BatchNormMode {
    /// Folded into the preceding Conv/Dense; BatchNorms that cannot be folded pass relevance.
    Fold,
    /// Folded where possible; others get the Z rule on their affine map.
    FoldOrZ,
    /// Never folded; Pass.
    Pass,
}

/// One rule entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Which nodes it applies to.
    pub select: Selector,
    /// The rule.
    pub rule: RuleSpec,
}

/// Selects nodes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub enum Selector {
    /// Nodes of one op kind: `Op(Conv)`.
    Op(OpKind),
    /// Nodes of any of these op kinds: `Ops([Conv, Dense])`.
    Ops(Vec<OpKind>),
    /// Nodes whose name matches a glob (`*`, `?`, `[...]`): `Name("features.*")`.
    Name(String),
    /// The first layers: Conv/Dense nodes whose input comes from the graph input through
    /// shape-only ops (Flatten, Reshape, Transpose, Squeeze, Unsqueeze, Pad, Identity, Dropout).
    FirstLayer,
    /// Conv/Dense layers by position among all Conv/Dense layers in topological order:
    /// `Layers(start, end)`, half-open, negative values counting from the end, `end` None =
    /// to the end. `Layers(-1, None)` is the last layer.
    Layers(i64, Option<i64>),
    /// All of the selectors match.
    All(Vec<Selector>),
    /// Any of the selectors matches.
    Any(Vec<Selector>),
    /// The selector does not match.
    Not(Box<Selector>),
}

/// Op kinds as selectors name them (the IR's op tags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[allow(missing_docs)]
pub enum OpKind {
    Conv,
    Dense,
    Relu,
    LeakyRelu,
    Sigmoid,
    Tanh,
    Clip,
    MaxPool,
    AvgPool,
    GlobalAvgPool,
    GlobalMaxPool,
    Flatten,
    Reshape,
    Transpose,
    Squeeze,
    Unsqueeze,
    BatchNorm,
    Add,
    Concat,
    Pad,
    Softmax,
    Dropout,
    Identity,
}

impl OpKind {
    fn matches(self, op: &Op) -> bool {
        format!("{self:?}") == op.kind()
    }
}

/// A rule by name with its parameters, as written in RON: `AlphaBeta(alpha: 2.0, beta: 1.0)`.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSpec {
    /// The registered rule name.
    pub name: String,
    /// The parameters.
    pub params: Params,
}

impl std::fmt::Display for RuleSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name)
    }
}

thread_local! {
    static REGISTRY: RefCell<Option<Registry>> = const { RefCell::new(None) };
}

impl<'de> Deserialize<'de> for RuleSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // `Name` or `Name(key: value, ...)`: read the raw text, then the parameters with the
        // types the registry declares for that rule.
        let raw = <&ron::value::RawValue>::deserialize(d)?;
        let text = raw.get_ron().trim();
        let (name, body) = match text.find('(') {
            Some(i) => (text[..i].trim(), Some(&text[i..])),
            None => (text, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(de::Error::custom(format!(
                "'{text}' is not a rule (expected a rule name such as Flat or Epsilon(epsilon: 0.1))"
            )));
        }
        let decls = REGISTRY.with(|r| {
            let r = r.borrow();
            let reg = r.as_ref().expect("rule configs parse with a registry");
            reg.get(name)
                .map(|e| e.params.clone())
                .ok_or_else(|| reg.unknown(name))
        });
        let decls = decls.map_err(de::Error::custom)?;
        let params = match body {
            None => Params::default(),
            Some(body) => ron::Options::default()
                .from_str_seed(
                    body,
                    ParamsSeed(ParamsVisitor {
                        rule: name.to_string(),
                        decls,
                    }),
                )
                .map_err(|e| de::Error::custom(format!("in {name}{body}: {}", e.code)))?,
        };
        Ok(RuleSpec {
            name: name.to_string(),
            params,
        })
    }
}

struct ParamsSeed(ParamsVisitor);

impl<'de> DeserializeSeed<'de> for ParamsSeed {
    type Value = Params;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Params, D::Error> {
        d.deserialize_struct("", &[], self.0)
    }
}

struct ParamsVisitor {
    rule: String,
    decls: Vec<crate::registry::ParamDecl>,
}

impl<'de> Visitor<'de> for ParamsVisitor {
    type Value = Params;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the parameters of {}", self.rule)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Params, E> {
        Ok(Params::default())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Params, A::Error> {
        let mut pairs = Vec::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let Some(decl) = self.decls.iter().find(|d| d.name == key) else {
                let known: Vec<&str> = self.decls.iter().map(|d| d.name).collect();
                return Err(de::Error::custom(format!(
                    "rule {} has no parameter '{key}' (its parameters: {})",
                    self.rule,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            };
            let value = map.next_value_seed(ValueSeed(decl.kind))?;
            pairs.push((key, value));
        }
        Ok(Params::from_pairs(pairs))
    }
}

/// A field name: an identifier in RON.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        struct Key;
        impl Visitor<'_> for Key {
            type Value = String;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "a parameter name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
                Ok(v.to_string())
            }
        }
        d.deserialize_identifier(Key)
    }
}

struct ValueSeed(ParamKind);

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = ParamValue;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ParamValue, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(f32),
            Many(Vec<f32>),
        }
        match self.0 {
            ParamKind::Float => f32::deserialize(d).map(ParamValue::Float),
            ParamKind::Floats => Ok(ParamValue::Floats(match OneOrMany::deserialize(d)? {
                OneOrMany::One(v) => vec![v],
                OneOrMany::Many(v) => v,
            })),
            ParamKind::Bool => bool::deserialize(d).map(ParamValue::Bool),
            ParamKind::Stabilizer => Stabilizer::deserialize(d).map(ParamValue::Stabilizer),
            ParamKind::Ron => <&ron::value::RawValue>::deserialize(d)
                .map(|raw| ParamValue::Ron(raw.get_ron().trim().to_string())),
            ParamKind::Name(allowed) => {
                struct Ident(&'static [&'static str]);
                impl Visitor<'_> for Ident {
                    type Value = String;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        write!(f, "one of {}", self.0.join(", "))
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
                        if self.0.contains(&v) {
                            Ok(v.to_string())
                        } else {
                            Err(E::custom(format!(
                                "'{v}' is not one of {}",
                                self.0.join(", ")
                            )))
                        }
                    }
                }
                d.deserialize_identifier(Ident(allowed))
                    .map(ParamValue::Name)
            }
        }
    }
}

/// An error in a rule configuration, with its position where the text is at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The RON text is not a valid configuration.
    #[error("{file}:{line}:{col}: {message}")]
    Parse {
        /// The file (or preset) name.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        col: usize,
        /// What is wrong.
        message: String,
    },
    /// A node cannot be given a rule.
    #[error("{config}: node '{node}' ({op}): {message}")]
    Assign {
        /// The configuration's name.
        config: String,
        /// The node.
        node: String,
        /// Its op.
        op: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The file cannot be read.
    #[error("{file}: cannot read: {source}")]
    Io {
        /// The file.
        file: String,
        /// The error.
        source: std::io::Error,
    },
}

impl RuleConfig {
    /// Parses a configuration; `file` names it in errors (which carry line and column).
    pub fn parse(text: &str, file: &str, registry: &Registry) -> Result<Self, ConfigError> {
        let previous = REGISTRY.with(|r| r.replace(Some(registry.clone())));
        let result = ron::Options::default().from_str::<RuleConfig>(text);
        REGISTRY.with(|r| r.replace(previous));
        let mut config = result.map_err(|e| ConfigError::Parse {
            file: file.to_string(),
            line: e.span.start.line,
            col: e.span.start.col,
            message: e.code.to_string(),
        })?;
        if config.name.is_empty() {
            config.name = file.to_string();
        }
        Ok(config)
    }

    /// Reads and parses a configuration file.
    pub fn load(path: &Path, registry: &Registry) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            file: file.clone(),
            source,
        })?;
        Self::parse(&text, &file, registry)
    }

    /// Gives every node of `graph` its rule: the first matching entry, else the convention for
    /// its op; a Conv/Dense node that no entry covers is an error naming it.
    pub fn assign(&self, graph: &Graph, registry: &Registry) -> Result<Assignment, ConfigError> {
        let defaults = Defaults {
            stabilizer: self.conventions.stabilizer,
        };
        let info = GraphInfo::new(graph);
        let mut rules: Vec<Option<Arc<dyn Rule>>> = vec![None; graph.nodes().len()];
        for &id in graph.topo_order() {
            let node = &graph.nodes()[id];
            let err = |message: String| ConfigError::Assign {
                config: self.name.clone(),
                node: node.name.clone(),
                op: node.op.kind(),
                message,
            };
            let entry = self
                .rules
                .iter()
                .find(|e| e.select.matches(graph, id, &info));
            let rule: Arc<dyn Rule> = match entry {
                Some(e) => registry.build(&e.rule.name, &e.rule.params, &defaults).map_err(err)?,
                None => self.convention(&node.op).ok_or_else(|| {
                    err(match node.op {
                        Op::Softmax { .. } => {
                            "a Softmax inside the graph has no relevance rule (only a final Softmax is removed)".into()
                        }
                        _ => "no rule of this configuration covers it (add an entry that selects it)".into(),
                    })
                })?,
            };
            rules[id] = Some(rule);
        }
        Ok(Assignment {
            rules: rules
                .into_iter()
                .map(|r| r.expect("every node visited"))
                .collect(),
        })
    }

    fn convention(&self, op: &Op) -> Option<Arc<dyn Rule>> {
        let c = &self.conventions;
        Some(match op {
            Op::Relu
            | Op::LeakyRelu { .. }
            | Op::ThresholdedRelu { .. }
            | Op::Elu { .. }
            | Op::Selu { .. }
            | Op::Sigmoid
            | Op::Tanh
            | Op::Clip { .. } => Arc::new(Pass),
            Op::Concat { .. } => Arc::new(Move),
            op if op.is_shape_only() => Arc::new(Move),
            Op::MaxPool { .. } | Op::GlobalMaxPool => Arc::new(MaxPoolRule {
                routing: c.max_pool,
                stabilizer: c.stabilizer,
            }),
            Op::AvgPool { .. } | Op::GlobalAvgPool => Arc::new(AvgPoolRule {
                split: c.avg_pool,
                stabilizer: c.stabilizer,
            }),
            Op::Add => Arc::new(AddRule {
                split: c.add,
                stabilizer: c.stabilizer,
            }),
            Op::BatchNorm { .. } => Arc::new(BatchNormRule {
                z_rule: c.batch_norm == BatchNormMode::FoldOrZ,
                stabilizer: c.stabilizer,
            }),
            _ => return None,
        })
    }
}

/// The rule of every node.
#[derive(Debug, Clone)]
pub struct Assignment {
    rules: Vec<Arc<dyn Rule>>,
}

impl Assignment {
    /// The rule of node `id`.
    pub fn rule(&self, id: NodeId) -> &Arc<dyn Rule> {
        &self.rules[id]
    }

    /// One line per node in topological order: name, op, rule with its parameters. Stable
    /// text, meant for snapshot tests.
    pub fn describe(&self, graph: &Graph) -> String {
        let rows: Vec<(String, String, String)> = graph
            .topo_order()
            .iter()
            .map(|&i| {
                let n = &graph.nodes()[i];
                (
                    n.name.clone(),
                    n.op.kind().to_string(),
                    self.rules[i].describe(),
                )
            })
            .collect();
        let w0 = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
        let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
        rows.iter()
            .map(|(a, b, c)| format!("{a:<w0$}  {b:<w1$}  {c}\n"))
            .collect()
    }
}

/// Facts about the graph that selectors need.
struct GraphInfo {
    first: Vec<bool>,
    layer_index: Vec<Option<usize>>,
    layers: usize,
}

impl GraphInfo {
    fn new(graph: &Graph) -> Self {
        let n = graph.nodes().len();
        // raw[i]: node i's output is the graph input moved by shape-only ops.
        let mut raw = vec![false; n];
        let mut first = vec![false; n];
        let mut layer_index = vec![None; n];
        let mut layers = 0;
        let input = &graph.input().name;
        for &id in graph.topo_order() {
            let node = &graph.nodes()[id];
            let from_raw = node
                .inputs
                .iter()
                .all(|s| s == input || graph.node_id(s).is_some_and(|j| raw[j]));
            if node.op.is_shape_only() {
                raw[id] = from_raw;
            }
            if matches!(node.op, Op::Conv { .. } | Op::Dense) {
                first[id] = from_raw;
                layer_index[id] = Some(layers);
                layers += 1;
            }
        }
        GraphInfo {
            first,
            layer_index,
            layers,
        }
    }
}

impl Selector {
    fn matches(&self, graph: &Graph, id: NodeId, info: &GraphInfo) -> bool {
        let node = &graph.nodes()[id];
        match self {
            Selector::Op(k) => k.matches(&node.op),
            Selector::Ops(ks) => ks.iter().any(|k| k.matches(&node.op)),
            Selector::Name(glob) => globset::Glob::new(glob)
                .map(|g| g.compile_matcher().is_match(&node.name))
                .unwrap_or(false),
            Selector::FirstLayer => info.first[id],
            Selector::Layers(start, end) => {
                let Some(k) = info.layer_index[id] else {
                    return false;
                };
                let n = info.layers as i64;
                let norm = |v: i64| if v < 0 { (n + v).max(0) } else { v.min(n) };
                let (s, e) = (norm(*start), end.map(norm).unwrap_or(n));
                (s..e).contains(&(k as i64))
            }
            Selector::All(v) => v.iter().all(|s| s.matches(graph, id, info)),
            Selector::Any(v) => v.iter().any(|s| s.matches(graph, id, info)),
            Selector::Not(s) => !s.matches(graph, id, info),
        }
    }
}
