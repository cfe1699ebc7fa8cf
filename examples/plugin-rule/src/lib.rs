//! An example rule plugin for lrp-graph: **GammaByDepth**, LRP-γ whose γ depends on the layer.
//!
//! Montavon et al. (2019) recommend more γ in lower layers than in upper ones. GammaByDepth
//! gives the Conv/Dense layer with `d` Conv/Dense layers after it (in topological order; the last
//! layer has `d = 0`)
//!
//! ```text
//! γ_d = gamma · growth^d,   W_γ = W + γ_d W⁺,   b_γ = b + γ_d b⁺
//! R_in = x ⊙ W_γᵀ (R_out / stab(x·W_γ + b_γ))
//! ```
//!
//! With `growth: 1.0` it is the built-in `Gamma(gamma: γ, generalized: false)`.
//!
//! [`register`] adds it to a registry; a RON rule configuration then names it:
//! `(select: Ops([Conv, Dense]), rule: GammaByDepth(gamma: 0.05, growth: 2.0))`.

use std::sync::Arc;

use lrp_graph::ir::Op;
use lrp_graph::rules::rule::{mul_rows, zip_rows};
use lrp_graph::rules::{
    Defaults, NodeContext, ParamDecl, ParamKind, Params, Registry, Rule, Stabilizer,
};
use ndarray::{ArrayD, ArrayViewD};

/// LRP-γ with `γ = gamma · growth^depth` (see the crate docs).
#[derive(Debug, Clone, PartialEq)]
pub struct GammaByDepth {
    /// γ of the last Conv/Dense layer.
    pub gamma: f32,
    /// Factor of γ per layer towards the input.
    pub growth: f32,
    /// Denominator stabiliser.
    pub stabilizer: Stabilizer,
}

impl GammaByDepth {
    /// γ of node `ctx.id`: `gamma · growth^d`, `d` the Conv/Dense layers after it.
    pub fn gamma_at(&self, ctx: &NodeContext<'_>) -> f32 {
        let order = ctx.graph.topo_order();
        let at = order.iter().position(|&i| i == ctx.id).unwrap_or(0);
        let after = order[at + 1..]
            .iter()
            .filter(|&&i| matches!(ctx.graph.nodes()[i].op, Op::Conv { .. } | Op::Dense))
            .count();
        self.gamma * self.growth.powi(after as i32)
    }
}

impl Rule for GammaByDepth {
    fn relevance(
        &self,
        ctx: &NodeContext<'_>,
        r_out: ArrayViewD<'_, f32>,
    ) -> Result<Vec<ArrayD<f32>>, String> {
        let linear = ctx
            .linear()
            .ok_or("GammaByDepth applies to Conv and Dense layers only")?;
        let gamma = self.gamma_at(ctx);
        let boost = |w: &f32| w + gamma * w.max(0.0);
        let w = linear.weight.map(boost);
        let x = ctx.inputs[0].view();
        // z = x·W_γ + b_γ, one row per image, summed in f64: with γ the products have both
        // signs and can cancel.
        let mut z = linear.forward(x.mapv(f64::from).view(), w.mapv(f64::from).view());
        if let Some(b) = &linear.bias {
            linear.add_bias(&mut z, &b.map(|v| f64::from(boost(v))));
        }
        let denominator = z.mapv(|z| self.stabilizer.apply_f64(z) as f32);
        // s = R / stab(z): relevance row m belongs to image m / maps.
        let mut s = r_out.to_owned();
        zip_rows(&mut s, denominator.view(), ctx.maps, |r, d| *r /= d);
        let mut r_in = linear.transpose(s.view(), w.view());
        mul_rows(&mut r_in, x, ctx.maps);
        Ok(vec![r_in])
    }

    fn describe(&self) -> String {
        format!(
            "GammaByDepth(gamma: {}, growth: {}, stabilizer: {:?})",
            self.gamma, self.growth, self.stabilizer
        )
    }

    /// `z` is computed again from the inputs: the forward pass need not keep the layer's
    /// output (ONNX Runtime may then fuse the layer with its ReLU).
    fn reads_output(&self) -> bool {
        false
    }
}

/// Registers GammaByDepth in `registry` with its parameters `gamma` (default 0.25), `growth`
/// (default 1) and `stabilizer` (default: the configuration's).
pub fn register(registry: &mut Registry) -> Result<(), String> {
    registry.register(
        "GammaByDepth",
        "LRP-γ with γ = gamma·growth^d, d the Conv/Dense layers after the node",
        vec![
            ParamDecl::new(
                "gamma",
                ParamKind::Float,
                "γ of the last layer, default 0.25",
            ),
            ParamDecl::new(
                "growth",
                ParamKind::Float,
                "factor of γ per layer towards the input, default 1",
            ),
            ParamDecl::new(
                "stabilizer",
                ParamKind::Stabilizer,
                "denominator stabiliser (default: the configuration's)",
            ),
        ],
        |p: &Params, d: &Defaults| {
            let rule = GammaByDepth {
                gamma: p.float("gamma", 0.25),
                growth: p.float("growth", 1.0),
                stabilizer: p.stabilizer("stabilizer", d.stabilizer),
            };
            if !(rule.gamma >= 0.0 && rule.gamma.is_finite()) {
                return Err(format!("gamma = {} must be finite and ≥ 0", rule.gamma));
            }
            if !(rule.growth > 0.0 && rule.growth.is_finite()) {
                return Err(format!("growth = {} must be finite and > 0", rule.growth));
            }
            Ok(Arc::new(rule))
        },
    )
}

/// The built-in rules and GammaByDepth.
pub fn registry() -> Registry {
    let mut r = Registry::with_builtins();
    register(&mut r).expect("GammaByDepth is not a built-in name");
    r
}
