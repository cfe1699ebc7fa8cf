//! The rule registry: rule names → constructors taking RON parameters.
//!
//! Built-in rules register through [`Registry::register`] exactly as a user's plugin does.

use std::collections::BTreeMap;
use std::sync::Arc;

use lrp_kernels::Stabilizer;

use crate::basic::{BasicRule, BiasMod, BiasMode, ParamMod, Term};
use crate::rule::{Bounds, Rule};
use crate::structural::{
    AddRule, AvgPoolRule, BatchNormRule, MaxPoolRouting, MaxPoolRule, Move, Pass, Split,
};

/// The type of a rule parameter, as written in RON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// A number: `0.25`.
    Float,
    /// A number or a list of numbers (one per channel): `-1.0` or `[-2.1, -2.0, -1.8]`.
    Floats,
    /// `true` or `false`.
    Bool,
    /// One of the listed identifiers: `Full`.
    Name(&'static [&'static str]),
    /// A stabiliser: `SignEpsilon(1e-6)` or `ZeroGuard(1e-7)`.
    Stabilizer,
    /// Any RON value, kept as text for the constructor to read with serde (e.g. the terms of
    /// a `Basic` rule).
    Ron,
}

/// A declared parameter of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamDecl {
    /// Its name in RON.
    pub name: &'static str,
    /// Its type.
    pub kind: ParamKind,
    /// What it means and its default.
    pub doc: &'static str,
}

impl ParamDecl {
    /// A parameter declaration.
    pub const fn new(name: &'static str, kind: ParamKind, doc: &'static str) -> Self {
        ParamDecl { name, kind, doc }
    }
}

/// A parameter value read from RON.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// A number.
    Float(f32),
    /// A list of numbers (a single number is a list of one).
    Floats(Vec<f32>),
    /// A boolean.
    Bool(bool),
    /// An identifier.
    Name(String),
    /// A stabiliser.
    Stabilizer(Stabilizer),
    /// RON text of a [`ParamKind::Ron`] parameter.
    Ron(String),
}

/// The parameters given to a rule, checked against its declarations.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Params {
    values: BTreeMap<String, ParamValue>,
}

impl Params {
    /// Parameters from name/value pairs.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, ParamValue)>) -> Self {
        Params {
            values: pairs.into_iter().collect(),
        }
    }

    /// The value of `name`, if given.
    pub fn get(&self, name: &str) -> Option<&ParamValue> {
        self.values.get(name)
    }

    /// Number `name`, or `default`.
    pub fn float(&self, name: &str, default: f32) -> f32 {
        match self.values.get(name) {
            Some(ParamValue::Float(v)) => *v,
            Some(ParamValue::Floats(v)) if v.len() == 1 => v[0],
            _ => default,
        }
    }

    /// Numbers `name`, or `default`.
    pub fn floats(&self, name: &str, default: &[f32]) -> Vec<f32> {
        match self.values.get(name) {
            Some(ParamValue::Floats(v)) => v.clone(),
            Some(ParamValue::Float(v)) => vec![*v],
            _ => default.to_vec(),
        }
    }

    /// Boolean `name`, or `default`.
    pub fn bool(&self, name: &str, default: bool) -> bool {
        match self.values.get(name) {
            Some(ParamValue::Bool(b)) => *b,
            _ => default,
        }
    }

    /// Identifier `name`, or `default`.
    pub fn name<'a>(&'a self, name: &str, default: &'a str) -> &'a str {
        match self.values.get(name) {
            Some(ParamValue::Name(s)) => s,
            _ => default,
        }
    }

    /// Stabiliser `name`, or `default`.
    pub fn stabilizer(&self, name: &str, default: Stabilizer) -> Stabilizer {
        match self.values.get(name) {
            Some(ParamValue::Stabilizer(s)) => *s,
            _ => default,
        }
    }

    /// RON text of parameter `name` (a [`ParamKind::Ron`] parameter), if given.
    pub fn ron(&self, name: &str) -> Option<&str> {
        match self.values.get(name) {
            Some(ParamValue::Ron(s)) => Some(s),
            _ => None,
        }
    }

    /// The pairs, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ParamValue)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v))
    }
}

/// Defaults a rule constructor may use: the configuration's conventions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Defaults {
    /// The configuration's stabiliser for rules that do not name one.
    pub stabilizer: Stabilizer,
}

/// Builds a rule from its parameters.
pub type Constructor =
    Arc<dyn Fn(&Params, &Defaults) -> Result<Arc<dyn Rule>, String> + Send + Sync>;

/// A registered rule.
#[derive(Clone)]
pub struct RuleEntry {
    /// Its name in RON (`AlphaBeta`).
    pub name: String,
    /// What it does.
    pub doc: String,
    /// Its parameters.
    pub params: Vec<ParamDecl>,
    /// Its constructor.
    pub constructor: Constructor,
}

impl std::fmt::Debug for RuleEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleEntry")
            .field("name", &self.name)
            .field("params", &self.params)
            .finish()
    }
}

/// Rule names → constructors.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    entries: BTreeMap<String, RuleEntry>,
}

const STAB: ParamDecl = ParamDecl::new(
    "stabilizer",
    ParamKind::Stabilizer,
    "denominator stabiliser (default: the configuration's conventions.stabilizer)",
);
const BIAS: ParamDecl = ParamDecl::new(
    "bias",
    ParamKind::Name(&["Full", "Split", "Ignore"]),
    "bias convention: Full (iNNvestigate), Split (Zennit), Ignore; default Split",
);

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry with every built-in rule.
    pub fn with_builtins() -> Self {
        let mut r = Self::new();
        r.register_builtins();
        r
    }

    /// Registers a rule; a name already taken is an error.
    pub fn register(
        &mut self,
        name: &str,
        doc: &str,
        params: Vec<ParamDecl>,
        constructor: impl Fn(&Params, &Defaults) -> Result<Arc<dyn Rule>, String>
        + Send
        + Sync
        + 'static,
    ) -> Result<(), String> {
        if self.entries.contains_key(name) {
            return Err(format!("a rule named '{name}' is already registered"));
        }
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "rule name '{name}' must be a RON identifier (letters, digits, _)"
            ));
        }
        self.entries.insert(
            name.to_string(),
            RuleEntry {
                name: name.to_string(),
                doc: doc.to_string(),
                params,
                constructor: Arc::new(constructor),
            },
        );
        Ok(())
    }

    /// The rule called `name`.
    pub fn get(&self, name: &str) -> Option<&RuleEntry> {
        self.entries.get(name)
    }

    /// Every registered rule, in name order.
    pub fn entries(&self) -> impl Iterator<Item = &RuleEntry> {
        self.entries.values()
    }

    /// Builds rule `name` with `params`.
    pub fn build(
        &self,
        name: &str,
        params: &Params,
        defaults: &Defaults,
    ) -> Result<Arc<dyn Rule>, String> {
        let entry = self.get(name).ok_or_else(|| self.unknown(name))?;
        (entry.constructor)(params, defaults).map_err(|e| format!("rule {name}: {e}"))
    }

    /// The error for an unknown rule name, listing the known ones.
    pub fn unknown(&self, name: &str) -> String {
        format!(
            "unknown rule '{name}' (registered rules: {})",
            self.entries.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    }

    fn register_builtins(&mut self) {
        let ok = |r: Result<(), String>| r.expect("built-in names are unique");
        ok(self.register(
            "Z",
            "LRP-0: R_i = x_i Σ_j w_ij R_j / stab(z_j)",
            vec![STAB],
            |p, d| {
                Ok(Arc::new(BasicRule::z(
                    p.stabilizer("stabilizer", d.stabilizer),
                )))
            },
        ));
        ok(self.register(
            "Epsilon",
            "LRP-ε: the Z rule with the stabiliser SignEpsilon(epsilon)",
            vec![ParamDecl::new(
                "epsilon",
                ParamKind::Float,
                "ε, default 1e-6",
            )],
            |p, _| {
                let e = p.float("epsilon", 1e-6);
                if !(e >= 0.0 && e.is_finite()) {
                    return Err(format!("epsilon = {e} must be finite and ≥ 0"));
                }
                Ok(Arc::new(BasicRule::epsilon(e)))
            },
        ));
        ok(self.register(
            "AlphaBeta",
            "LRP-αβ with α − β = 1: positive contributions weighted α, negative β",
            vec![
                ParamDecl::new("alpha", ParamKind::Float, "α, default 2"),
                ParamDecl::new("beta", ParamKind::Float, "β, default 1"),
                BIAS,
                STAB,
            ],
            |p, d| {
                let (a, b) = (p.float("alpha", 2.0), p.float("beta", 1.0));
                if a < 0.0 || b < 0.0 || ((a - b) - 1.0).abs() > 1e-6 {
                    return Err(format!(
                        "alpha = {a}, beta = {b}: both must be ≥ 0 with alpha − beta = 1"
                    ));
                }
                Ok(Arc::new(BasicRule::alpha_beta(
                    a,
                    b,
                    bias_mode(p)?,
                    p.stabilizer("stabilizer", d.stabilizer),
                )))
            },
        ));
        ok(self.register(
            "ZPlus",
            "LRP-z⁺: AlphaBeta(alpha: 1, beta: 0)",
            vec![BIAS, STAB],
            |p, d| {
                Ok(Arc::new(BasicRule::alpha_beta(
                    1.0,
                    0.0,
                    bias_mode(p)?,
                    p.stabilizer("stabilizer", d.stabilizer),
                )))
            },
        ));
        ok(self.register(
            "ZBox",
            "bounded z^B for inputs in [low, high] (the first layer)",
            vec![
                ParamDecl::new(
                    "low",
                    ParamKind::Floats,
                    "lowest input value, scalar or per channel; default -1",
                ),
                ParamDecl::new(
                    "high",
                    ParamKind::Floats,
                    "highest input value, scalar or per channel; default 1",
                ),
                STAB,
            ],
            |p, d| {
                let bounds = Bounds {
                    low: p.floats("low", &[-1.0]),
                    high: p.floats("high", &[1.0]),
                };
                check_bounds(&bounds)?;
                Ok(Arc::new(BasicRule::z_box(
                    bounds,
                    p.stabilizer("stabilizer", d.stabilizer),
                )))
            },
        ));
        ok(self.register(
            "Flat",
            "relevance spread evenly over each unit's in-bounds inputs",
            vec![STAB],
            |p, d| {
                Ok(Arc::new(BasicRule::flat(
                    p.stabilizer("stabilizer", d.stabilizer),
                )))
            },
        ));
        ok(self.register(
            "WSquare",
            "relevance spread in proportion to w²",
            vec![STAB],
            |p, d| {
                Ok(Arc::new(BasicRule::w_square(
                    p.stabilizer("stabilizer", d.stabilizer),
                )))
            },
        ));
        ok(self.register(
            "Gamma",
            "LRP-γ: positive weights boosted by γ (Zennit's generalised form by default)",
            vec![
                ParamDecl::new("gamma", ParamKind::Float, "γ, default 0.25"),
                ParamDecl::new(
                    "generalized",
                    ParamKind::Bool,
                    "Zennit's sign-aware form (default true); false: Z with w + γw⁺ everywhere",
                ),
                STAB,
            ],
            |p, d| {
                let g = p.float("gamma", 0.25);
                if !(g >= 0.0 && g.is_finite()) {
                    return Err(format!("gamma = {g} must be finite and ≥ 0"));
                }
                Ok(Arc::new(BasicRule::gamma(
                    g,
                    p.bool("generalized", true),
                    p.stabilizer("stabilizer", d.stabilizer),
                )))
            },
        ));
        ok(self.register(
            "Basic",
            "a rule written as data (Zennit's BasicHook): terms of branches, each branch a sign, an input modifier and a weight modifier; see docs/rules.md",
            vec![
                ParamDecl::new(
                    "terms",
                    ParamKind::Ron,
                    "the terms (required): [(coef: 1.0, branches: [(sign: 1.0, input: Positive, param: Positive)], bias: Positive, mask: All)]; input Identity|Positive|Negative|Ones|Low|High|MinusLow|MinusHigh, param Identity|Positive|Negative|Squared|Ones|Gamma(gamma: G, positive: B), bias None|Identity|Positive|Negative|Gamma(..), mask All|Positive|Negative",
                ),
                ParamDecl::new(
                    "low",
                    ParamKind::Floats,
                    "lowest input value for Low and MinusLow branches, scalar or per channel",
                ),
                ParamDecl::new(
                    "high",
                    ParamKind::Floats,
                    "highest input value for High and MinusHigh branches, scalar or per channel",
                ),
                ParamDecl::new(
                    "f64_denominators",
                    ParamKind::Bool,
                    "recomputed denominators that can cancel are summed in f64 (default true)",
                ),
                STAB,
            ],
            basic_from_params,
        ));
        ok(self.register(
            "Pass",
            "R_in = R_out (element-wise layers)",
            vec![],
            |_, _| Ok(Arc::new(Pass)),
        ));
        ok(self.register(
            "Move",
            "moves relevance with the values (Flatten, Reshape, Transpose, Squeeze, Unsqueeze, Pad, Concat)",
            vec![],
            |_, _| Ok(Arc::new(Move)),
        ));
        ok(self.register(
            "MaxPool",
            "MaxPool/GlobalMaxPool routing",
            vec![
                ParamDecl::new(
                    "routing",
                    ParamKind::Name(&["WinnerTakeAll", "Proportional"]),
                    "WinnerTakeAll (default) or Proportional",
                ),
                STAB,
            ],
            |p, d| {
                let routing = match p.name("routing", "WinnerTakeAll") {
                    "WinnerTakeAll" => MaxPoolRouting::WinnerTakeAll,
                    _ => MaxPoolRouting::Proportional,
                };
                Ok(Arc::new(MaxPoolRule {
                    routing,
                    stabilizer: p.stabilizer("stabilizer", d.stabilizer),
                }))
            },
        ));
        let split = ParamDecl::new(
            "split",
            ParamKind::Name(&["Proportional", "Gradient"]),
            "Proportional (default, the z-rule) or Gradient",
        );
        ok(self.register(
            "AvgPool",
            "AvgPool/GlobalAvgPool",
            vec![split, STAB],
            |p, d| {
                Ok(Arc::new(AvgPoolRule {
                    split: split_of(p),
                    stabilizer: p.stabilizer("stabilizer", d.stabilizer),
                }))
            },
        ));
        ok(self.register(
            "Add",
            "Add (residual connections)",
            vec![split, STAB],
            |p, d| {
                Ok(Arc::new(AddRule {
                    split: split_of(p),
                    stabilizer: p.stabilizer("stabilizer", d.stabilizer),
                }))
            },
        ));
        ok(self.register(
            "BatchNorm",
            "a BatchNorm not folded into a Conv/Dense: Pass, or the Z rule on its affine map",
            vec![
                ParamDecl::new(
                    "z",
                    ParamKind::Bool,
                    "Z rule (true) or Pass (false, default)",
                ),
                STAB,
            ],
            |p, d| {
                Ok(Arc::new(BatchNormRule {
                    z_rule: p.bool("z", false),
                    stabilizer: p.stabilizer("stabilizer", d.stabilizer),
                }))
            },
        ));
    }
}

/// Builds a `Basic` rule from its RON parameters.
fn basic_from_params(p: &Params, d: &Defaults) -> Result<Arc<dyn Rule>, String> {
    let text = p
        .ron("terms")
        .ok_or("the parameter 'terms' is required, e.g. terms: [(branches: [(input: Positive, param: Positive)])]")?;
    let terms: Vec<Term> = ron::from_str(text).map_err(|e| format!("terms: {}", e.code))?;
    check_terms(&terms)?;
    let bounds = match (p.get("low"), p.get("high")) {
        (None, None) => None,
        (Some(_), Some(_)) => {
            let b = Bounds {
                low: p.floats("low", &[]),
                high: p.floats("high", &[]),
            };
            check_bounds(&b)?;
            Some(b)
        }
        _ => return Err("low and high go together".into()),
    };
    let stabilizer = p.stabilizer("stabilizer", d.stabilizer);
    let mut description = format!(
        "Basic(terms: {}, stabilizer: {}",
        crate::basic::terms_text(&terms),
        crate::basic::stab_text(stabilizer)
    );
    if let Some(b) = &bounds {
        description.push_str(&format!(
            ", low: {}, high: {}",
            crate::basic::nums(&b.low),
            crate::basic::nums(&b.high)
        ));
    }
    let f64_denominators = p.bool("f64_denominators", true);
    if !f64_denominators {
        description.push_str(", f64_denominators: false");
    }
    description.push(')');
    let mut rule = BasicRule::new(description, terms, stabilizer);
    rule.bounds = bounds;
    rule.f64_denominators = f64_denominators;
    Ok(Arc::new(rule))
}

/// The checks of a `Basic` rule's terms: at least one term, each with at least one branch, and
/// finite coefficients.
fn check_terms(terms: &[Term]) -> Result<(), String> {
    if terms.is_empty() {
        return Err("terms: at least one term is needed".into());
    }
    for (k, t) in terms.iter().enumerate() {
        if t.branches.is_empty() {
            return Err(format!("terms[{k}]: at least one branch is needed"));
        }
        let gammas = t
            .branches
            .iter()
            .filter_map(|b| match b.param {
                ParamMod::Gamma { gamma, .. } => Some(gamma),
                _ => None,
            })
            .chain(match t.bias {
                BiasMod::Gamma { gamma, .. } => Some(gamma),
                _ => None,
            });
        let values = std::iter::once(t.coef)
            .chain(t.branches.iter().map(|b| b.sign))
            .chain(gammas);
        if let Some(v) = values.into_iter().find(|v| !v.is_finite()) {
            return Err(format!("terms[{k}]: {v} is not a finite number"));
        }
    }
    Ok(())
}

fn bias_mode(p: &Params) -> Result<BiasMode, String> {
    Ok(match p.name("bias", "Split") {
        "Full" => BiasMode::Full,
        "Split" => BiasMode::Split,
        "Ignore" => BiasMode::Ignore,
        other => return Err(format!("bias '{other}' is not Full, Split or Ignore")),
    })
}

fn split_of(p: &Params) -> Split {
    match p.name("split", "Proportional") {
        "Gradient" => Split::Gradient,
        _ => Split::Proportional,
    }
}

/// Checks z^B bounds: finite, and `low < high` for every channel.
pub fn check_bounds(b: &Bounds) -> Result<(), String> {
    if b.low.is_empty() || b.high.is_empty() {
        return Err("low and high need at least one value".into());
    }
    if b.low.len() != b.high.len() && b.low.len() != 1 && b.high.len() != 1 {
        return Err(format!(
            "low has {} values, high {}",
            b.low.len(),
            b.high.len()
        ));
    }
    let n = b.low.len().max(b.high.len());
    for c in 0..n {
        let l = b.low[if b.low.len() == 1 { 0 } else { c }];
        let h = b.high[if b.high.len() == 1 { 0 } else { c }];
        if !(l.is_finite() && h.is_finite()) || l >= h {
            return Err(format!("low ({l}) must be below high ({h})"));
        }
    }
    Ok(())
}
