//! Relevance rules: the [`Rule`] trait, the [`Registry`] that maps rule names to constructors,
//! the built-in rules (Z, Epsilon, AlphaBeta, ZPlus, ZBox, Flat, WSquare, Gamma, Pass and the
//! rules of pooling, Add, BatchNorm and shape layers), initial [`Signal`]s, and rule
//! configurations in RON ([`RuleConfig`]) with the bundled presets ([`presets`]).
//!
//! The semantics are those of `SPEC.md`: every convention is a named parameter.

pub mod basic;
pub mod config;
pub mod presets;
pub mod registry;
pub mod rule;
pub mod signal;
pub mod structural;

pub use basic::{BasicRule, BiasMode};
pub use config::{
    Assignment, BatchNormMode, ConfigError, Conventions, Entry, RuleConfig, Selector,
};
pub use lrp_kernels::Stabilizer;
pub use registry::{Defaults, ParamDecl, ParamKind, ParamValue, Params, Registry};
pub use rule::{Bounds, Linear, NodeContext, Rule, ZeroInput};
pub use signal::{Signal, SignalNote};
