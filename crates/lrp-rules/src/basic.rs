//! [`BasicRule`]: the rules of linear layers as data, in the spirit of Zennit's `BasicHook`.
//!
//! A rule is a list of [`Term`]s. Term `t` has branches `b`, each a sign `c_b`, an input
//! modifier `m_b` and a weight modifier `p_b`, plus a bias modifier and an output mask:
//!
//! ```text
//! Z_t = Σ_b c_b · fwd(m_b(x), p_b(W)) + bias_t(b)
//! s_t = mask_t(z) ⊙ R_out / stab(Z_t)
//! R_in = Σ_t coef_t Σ_b c_b · m_b(x) ⊙ T(s_t, p_b(W))
//! ```
//!
//! where `fwd` is the layer's own linear map, `T` its transpose and `z` the layer's actual
//! output. Z, Epsilon, AlphaBeta, ZPlus, z^B, Flat, WSquare and Gamma are all such lists.

use std::sync::{Arc, Mutex};

use lrp_ir::Op;
use lrp_kernels::Stabilizer;
use lrp_kernels::kernels;
use ndarray::{ArrayD, ArrayViewD, Axis, CowArray, LinalgScalar, Slice};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::rule::{
    Bounds, Linear, LinearKind, NodeContext, Rule, ZeroInput, map_rows, mul_rows, repeat_rows, two,
    zip_rows,
};

/// What a branch feeds into the layer instead of the input `x`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum InputMod {
    /// `x`.
    Identity,
    /// `x⁺ = max(x, 0)`.
    Positive,
    /// `x⁻ = min(x, 0)`.
    Negative,
    /// 1 at every real input position.
    Ones,
    /// The lower bound `l` at every real input position.
    Low,
    /// The upper bound `h` at every real input position.
    High,
    /// `x − l` (`l` the lower bound): `(x − l)` with `W⁺` and `(x − h)` with `W⁻` give z^B's
    /// denominator as two one-signed sums when `l ≤ x ≤ h`.
    MinusLow,
    /// `x − h` (`h` the upper bound).
    MinusHigh,
}

/// How a branch modifies the weights.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum ParamMod {
    /// `W`.
    Identity,
    /// `W⁺`.
    Positive,
    /// `W⁻`.
    Negative,
    /// `W²`.
    Squared,
    /// All ones.
    Ones,
    /// `W + γ·W⁺` (`positive`) or `W + γ·W⁻`.
    Gamma {
        /// γ.
        gamma: f32,
        /// Add the positive (true) or the negative (false) part.
        positive: bool,
    },
}

impl ParamMod {
    /// The modified value of one weight (`Identity`: `v` itself).
    #[inline]
    pub fn apply(self, v: f32) -> f32 {
        match self {
            ParamMod::Identity => v,
            ParamMod::Positive => v.max(0.0),
            ParamMod::Negative => v.min(0.0),
            ParamMod::Squared => v * v,
            ParamMod::Ones => 1.0,
            ParamMod::Gamma { gamma, positive } => {
                v + gamma * if positive { v.max(0.0) } else { v.min(0.0) }
            }
        }
    }
}

/// `$body` with `$f` bound to `|v| m.apply(v)` for the modifier `m` fixed in each arm: a loop
/// over a whole weight then runs without a match per value (which does not vectorise). Gamma's
/// `positive` stays a captured value: both of its parts are a `max`/`min`, chosen by a select.
macro_rules! with_param_mod {
    ($m:expr, $f:ident => $body:expr) => {
        with_param_mod!(@arms $m, $f, $body, Identity, Positive, Negative, Squared, Ones)
    };
    (@arms $m:expr, $f:ident, $body:expr, $($unit:ident),*) => {
        match $m {
            $(ParamMod::$unit => {
                let $f = |v: f32| ParamMod::$unit.apply(v);
                $body
            })*
            ParamMod::Gamma { gamma, positive } => {
                let $f = move |v: f32| ParamMod::Gamma { gamma, positive }.apply(v);
                $body
            }
        }
    };
}

/// The default of [`BasicRule::mapped_min_elements`].
const MAPPED_MIN_ELEMENTS: usize = 1 << 24;

/// Which bias a term's denominator includes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum BiasMod {
    /// No bias.
    None,
    /// `b`.
    Identity,
    /// `b⁺`.
    Positive,
    /// `b⁻`.
    Negative,
    /// `b + γ·b⁺` (`positive`) or `b + γ·b⁻`.
    Gamma {
        /// γ.
        gamma: f32,
        /// Add the positive (true) or the negative (false) part.
        positive: bool,
    },
}

/// Where a term applies, judged by the layer's actual output `z`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum OutputMask {
    /// Everywhere.
    All,
    /// Where `z > 0`.
    Positive,
    /// Where `z < 0`.
    Negative,
}

/// One branch of a term. In RON every field may be left out: `(sign: 1.0, input: Identity,
/// param: Identity)` are the defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Branch {
    /// `c_b`, the branch's sign or weight in both the denominator and the redistribution.
    #[serde(default = "one")]
    pub sign: f32,
    /// `m_b`.
    #[serde(default = "identity_input")]
    pub input: InputMod,
    /// `p_b`.
    #[serde(default = "identity_param")]
    pub param: ParamMod,
}

/// One term: branches sharing a denominator. In RON only `branches` is required: `coef: 1.0`,
/// `bias: Identity` and `mask: All` are the defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Term {
    /// `coef_t`.
    #[serde(default = "one")]
    pub coef: f32,
    /// The branches.
    pub branches: Vec<Branch>,
    /// The bias in the denominator.
    #[serde(default = "identity_bias")]
    pub bias: BiasMod,
    /// Where the term applies.
    #[serde(default = "all_outputs")]
    pub mask: OutputMask,
}

impl Term {
    /// Whether the term's denominator is the layer's own output `z` (one plain branch, the
    /// bias as it is): the relevance pass then reads `z` instead of computing it again.
    fn is_plain(&self) -> bool {
        self.branches.len() == 1
            && self.branches[0].sign == 1.0
            && self.branches[0].input == InputMod::Identity
            && self.branches[0].param == ParamMod::Identity
            && self.bias == BiasMod::Identity
    }

    /// Whether the term reads the layer's output `z`: as its denominator, or for its mask.
    fn reads_output(&self) -> bool {
        self.is_plain() || self.mask != OutputMask::All
    }
}

fn one() -> f32 {
    1.0
}

fn identity_input() -> InputMod {
    InputMod::Identity
}

fn identity_param() -> ParamMod {
    ParamMod::Identity
}

fn identity_bias() -> BiasMod {
    BiasMod::Identity
}

fn all_outputs() -> OutputMask {
    OutputMask::All
}

/// A rule for Conv and Dense layers given as terms (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct BasicRule {
    /// The description `describe()` returns.
    pub description: String,
    /// The terms.
    pub terms: Vec<Term>,
    /// Denominator stabiliser.
    pub stabilizer: Stabilizer,
    /// Bounds for `Low`/`High` inputs (overridden by command-line bounds).
    pub bounds: Option<Bounds>,
    /// Exact denominators. A recomputed `Z_t` whose branch products can have both signs (z^B,
    /// γ, Z on signed inputs) can cancel to near 0 and is ill-conditioned in f32, so it is
    /// computed in f64. A sign-definite one (αβ's `x⁺W⁺ + x⁻W⁻`, `W²`, flat) cannot cancel:
    /// its sum runs in f32 (relative error ~1e-7 per term) and only the bias is added in f64.
    /// `false`: every branch sum in f32.
    pub f64_denominators: bool,
    /// Modified weights (`W⁺`, `W²`, …) computed on first use and kept for later calls.
    pub cache: WeightCache,
    /// Dense weights with at least this many elements are not modified whole and cached; each
    /// product maps them block by block instead (default 2^24, 64 MB), so that no modified
    /// copy of a large classifier layer stays in memory.
    pub mapped_min_elements: usize,
}

/// Modified weights of a rule, kept across calls: the key is the weight tensor's address,
/// shape and a sample of its values, with the modifier.
#[derive(Debug, Clone, Default)]
pub struct WeightCache(Arc<Mutex<Vec<CacheEntry>>>);

/// A modified weight tensor with what it was made from.
type CacheEntry = (CacheKey, Arc<ArrayD<f32>>);

/// Identifies a weight tensor and a modifier.
#[derive(Debug, Clone, PartialEq)]
struct CacheKey {
    ptr: usize,
    shape: Vec<usize>,
    sample: [f32; 8],
    param: ParamMod,
}

impl CacheKey {
    fn new(w: ArrayViewD<'_, f32>, param: ParamMod) -> Self {
        let mut sample = [0f32; 8];
        let n = w.len();
        if let Some(ws) = w.as_slice_memory_order() {
            for (k, v) in sample.iter_mut().enumerate() {
                if n > 0 {
                    *v = ws[(k * (n - 1)) / 7];
                }
            }
        }
        CacheKey {
            ptr: w.as_ptr() as usize,
            shape: w.shape().to_vec(),
            sample,
            param,
        }
    }
}

impl WeightCache {
    /// `m(w)`, from the cache when it was computed before; `None` for the identity.
    fn get(&self, w: ArrayViewD<'_, f32>, m: ParamMod) -> Option<Arc<ArrayD<f32>>> {
        if m == ParamMod::Identity {
            return None;
        }
        let key = CacheKey::new(w.view(), m);
        let mut entries = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, a)) = entries.iter().find(|(k, _)| *k == key) {
            return Some(a.clone());
        }
        let a = Arc::new(modify_weight(w, m)?);
        entries.push((key, a.clone()));
        Some(a)
    }
}

/// Caches are not part of a rule's meaning.
impl PartialEq for WeightCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

fn br(sign: f32, input: InputMod, param: ParamMod) -> Branch {
    Branch { sign, input, param }
}

fn term(coef: f32, branches: Vec<Branch>, bias: BiasMod, mask: OutputMask) -> Term {
    Term {
        coef,
        branches,
        bias,
        mask,
    }
}

/// Bias convention of AlphaBeta and ZPlus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BiasMode {
    /// Both the activator and the inhibitor contain the whole bias (iNNvestigate, bias=True).
    Full,
    /// The activator contains `b⁺`, the inhibitor `b⁻` (Zennit).
    Split,
    /// No bias.
    Ignore,
}

impl BasicRule {
    /// A rule from its terms, with no bounds of its own, exact denominators and an empty
    /// weight cache.
    pub fn new(description: String, terms: Vec<Term>, stabilizer: Stabilizer) -> Self {
        BasicRule {
            description,
            terms,
            stabilizer,
            bounds: None,
            f64_denominators: true,
            mapped_min_elements: MAPPED_MIN_ELEMENTS,
            cache: WeightCache::default(),
        }
    }

    /// Z: `R_i = x_i Σ_j w_ij R_j / stab(z_j)`.
    pub fn z(stabilizer: Stabilizer) -> Self {
        Self::new(
            format!("Z(stabilizer: {})", stab_text(stabilizer)),
            vec![term(
                1.0,
                vec![br(1.0, InputMod::Identity, ParamMod::Identity)],
                BiasMod::Identity,
                OutputMask::All,
            )],
            stabilizer,
        )
    }

    /// Epsilon: Z with `SignEpsilon(ε)`.
    pub fn epsilon(epsilon: f32) -> Self {
        BasicRule {
            description: format!("Epsilon(epsilon: {})", num(epsilon)),
            ..Self::z(Stabilizer::SignEpsilon(epsilon))
        }
    }

    /// AlphaBeta(α, β) with the given bias convention.
    pub fn alpha_beta(alpha: f32, beta: f32, bias: BiasMode, stabilizer: Stabilizer) -> Self {
        let (ba, bi) = match bias {
            BiasMode::Full => (BiasMod::Identity, BiasMod::Identity),
            BiasMode::Split => (BiasMod::Positive, BiasMod::Negative),
            BiasMode::Ignore => (BiasMod::None, BiasMod::None),
        };
        let mut terms = vec![term(
            alpha,
            vec![
                br(1.0, InputMod::Positive, ParamMod::Positive),
                br(1.0, InputMod::Negative, ParamMod::Negative),
            ],
            ba,
            OutputMask::All,
        )];
        if beta != 0.0 {
            terms.push(term(
                -beta,
                vec![
                    br(1.0, InputMod::Positive, ParamMod::Negative),
                    br(1.0, InputMod::Negative, ParamMod::Positive),
                ],
                bi,
                OutputMask::All,
            ));
        }
        Self::new(
            format!(
                "AlphaBeta(alpha: {}, beta: {}, bias: {bias:?}, stabilizer: {})",
                num(alpha),
                num(beta),
                stab_text(stabilizer)
            ),
            terms,
            stabilizer,
        )
    }

    /// Bounded z^B: `Z_j = fwd(x, W) − fwd(l, W⁺) − fwd(h, W⁻)`,
    /// `R_i = x_i T(s, W)_i − l T(s, W⁺)_i − h T(s, W⁻)_i`, evaluated in the equal form
    /// `Z_j = fwd(x − l, W⁺) + fwd(x − h, W⁻)`, `R_i = (x − l)_i T(s, W⁺)_i + (x − h)_i T(s, W⁻)_i`
    /// (`fwd` and `T` are linear, padding is 0 in both): two branches instead of three, and for
    /// inputs inside the box both sums are one-signed, so they need no f64.
    pub fn z_box(bounds: Bounds, stabilizer: Stabilizer) -> Self {
        let description = format!(
            "ZBox(low: {}, high: {}, stabilizer: {})",
            nums(&bounds.low),
            nums(&bounds.high),
            stab_text(stabilizer)
        );
        BasicRule {
            bounds: Some(bounds),
            ..Self::new(
                description,
                vec![term(
                    1.0,
                    vec![
                        br(1.0, InputMod::MinusLow, ParamMod::Positive),
                        br(1.0, InputMod::MinusHigh, ParamMod::Negative),
                    ],
                    BiasMod::None,
                    OutputMask::All,
                )],
                stabilizer,
            )
        }
    }

    /// Flat: relevance spread uniformly over each unit's in-bounds inputs.
    pub fn flat(stabilizer: Stabilizer) -> Self {
        Self::new(
            format!("Flat(stabilizer: {})", stab_text(stabilizer)),
            vec![term(
                1.0,
                vec![br(1.0, InputMod::Ones, ParamMod::Ones)],
                BiasMod::None,
                OutputMask::All,
            )],
            stabilizer,
        )
    }

    /// WSquare: relevance spread in proportion to `w²`.
    pub fn w_square(stabilizer: Stabilizer) -> Self {
        Self::new(
            format!("WSquare(stabilizer: {})", stab_text(stabilizer)),
            vec![term(
                1.0,
                vec![br(1.0, InputMod::Ones, ParamMod::Squared)],
                BiasMod::None,
                OutputMask::All,
            )],
            stabilizer,
        )
    }

    /// Gamma(γ). `generalized` (Zennit): `w + γw⁺`, `b + γb⁺` where `z > 0` and `w + γw⁻`,
    /// `b + γb⁻` where `z < 0`, with inputs split by sign; otherwise Z with `w + γw⁺`,
    /// `b + γb⁺` everywhere.
    pub fn gamma(gamma: f32, generalized: bool, stabilizer: Stabilizer) -> Self {
        let plus = ParamMod::Gamma {
            gamma,
            positive: true,
        };
        let minus = ParamMod::Gamma {
            gamma,
            positive: false,
        };
        let terms = if generalized {
            vec![
                term(
                    1.0,
                    vec![
                        br(1.0, InputMod::Positive, plus),
                        br(1.0, InputMod::Negative, minus),
                    ],
                    BiasMod::Gamma {
                        gamma,
                        positive: true,
                    },
                    OutputMask::Positive,
                ),
                term(
                    1.0,
                    vec![
                        br(1.0, InputMod::Positive, minus),
                        br(1.0, InputMod::Negative, plus),
                    ],
                    BiasMod::Gamma {
                        gamma,
                        positive: false,
                    },
                    OutputMask::Negative,
                ),
            ]
        } else {
            vec![term(
                1.0,
                vec![br(1.0, InputMod::Identity, plus)],
                BiasMod::Gamma {
                    gamma,
                    positive: true,
                },
                OutputMask::All,
            )]
        };
        Self::new(
            format!(
                "Gamma(gamma: {}, generalized: {generalized}, stabilizer: {})",
                num(gamma),
                stab_text(stabilizer)
            ),
            terms,
            stabilizer,
        )
    }
}

/// Shortest round-tripping text of a float (`1`, `0.25`, `1e-7`).
pub fn num(v: f32) -> String {
    let s = format!("{v}");
    let e = format!("{v:e}");
    if e.len() < s.len() { e } else { s }
}

/// One number as [`num`] writes it, or a list of them in brackets.
pub fn nums(v: &[f32]) -> String {
    if v.len() == 1 {
        num(v[0])
    } else {
        format!(
            "[{}]",
            v.iter().map(|x| num(*x)).collect::<Vec<_>>().join(", ")
        )
    }
}

/// Terms as RON text that reads back as the same terms, e.g.
/// `[(coef: 1, branches: [(sign: 1, input: Positive, param: Positive)], bias: Positive, mask: All)]`.
pub fn terms_text(terms: &[Term]) -> String {
    let gamma = |name: &str, gamma: f32, positive: bool| {
        format!("{name}(gamma: {}, positive: {positive})", num(gamma))
    };
    let param = |p: ParamMod| match p {
        ParamMod::Gamma { gamma: g, positive } => gamma("Gamma", g, positive),
        other => format!("{other:?}"),
    };
    let bias = |b: BiasMod| match b {
        BiasMod::Gamma { gamma: g, positive } => gamma("Gamma", g, positive),
        other => format!("{other:?}"),
    };
    let terms: Vec<String> = terms
        .iter()
        .map(|t| {
            let branches: Vec<String> = t
                .branches
                .iter()
                .map(|b| {
                    format!(
                        "(sign: {}, input: {:?}, param: {})",
                        num(b.sign),
                        b.input,
                        param(b.param)
                    )
                })
                .collect();
            format!(
                "(coef: {}, branches: [{}], bias: {}, mask: {:?})",
                num(t.coef),
                branches.join(", "),
                bias(t.bias),
                t.mask
            )
        })
        .collect();
    format!("[{}]", terms.join(", "))
}

/// A stabiliser as text: `SignEpsilon(1e-6)`, `ZeroGuard(1e-7)`.
pub fn stab_text(s: Stabilizer) -> String {
    match s {
        Stabilizer::SignEpsilon(e) => format!("SignEpsilon({})", num(e)),
        Stabilizer::ZeroGuard(e) => format!("ZeroGuard({})", num(e)),
    }
}

fn modify_weight(w: ArrayViewD<'_, f32>, m: ParamMod) -> Option<ArrayD<f32>> {
    (m != ParamMod::Identity).then(|| with_param_mod!(m, f => w.mapv(f)))
}

fn modify_bias(b: ArrayViewD<'_, f32>, m: BiasMod) -> Option<ArrayD<f32>> {
    Some(match m {
        BiasMod::None => return None,
        BiasMod::Identity => b.to_owned(),
        BiasMod::Positive => b.mapv(|v| v.max(0.0)),
        BiasMod::Negative => b.mapv(|v| v.min(0.0)),
        BiasMod::Gamma { gamma, positive } => {
            b.mapv(|v| v + gamma * if positive { v.max(0.0) } else { v.min(0.0) })
        }
    })
}

/// `Z_t = Σ_b c_b fwd(m_b(x), p_b(W))` in the element type `A`; `inputs[b]` and `weights[b]`
/// are the modified inputs and weights (None: unmodified, or mapped by `fwd` itself, which
/// gets the branch's index); branches not `live` (all-zero input) are left out. The bias is
/// not included.
fn branch_sum<A: LinalgScalar + From<f32> + std::ops::AddAssign + Send + Sync>(
    t: &Term,
    lin: &Linear<'_>,
    x: ArrayViewD<'_, f32>,
    inputs: &[Option<ArrayD<f32>>],
    weights: &[Option<Arc<ArrayD<f32>>>],
    live: &[bool],
    fwd: impl Fn(usize, ArrayViewD<'_, f32>, ArrayViewD<'_, f32>) -> ArrayD<A>,
) -> ArrayD<A> {
    let mut acc: Option<ArrayD<A>> = None;
    for (k, b) in t.branches.iter().enumerate().filter(|(k, _)| live[*k]) {
        let xi = inputs[k].as_ref().map(|a| a.view()).unwrap_or(x.view());
        let wi = weights[k]
            .as_deref()
            .map_or(lin.weight.view(), |w| w.view());
        let mut f = fwd(k, xi, wi);
        if b.sign != 1.0 {
            let c = A::from(b.sign);
            f.mapv_inplace(|v| v * c);
        }
        acc = Some(match acc {
            None => f,
            Some(mut a) => {
                a += &f;
                a
            }
        });
    }
    acc.expect("a term has branches")
}

/// A convolution's live `branches` (`(w_k, x_k)`) stacked along the input channels: the
/// geometry over all their channels, and their weights and inputs concatenated in that order
/// (branch `k` at channels `k·C .. (k+1)·C`). None, having copied nothing, for a Dense layer,
/// fewer than two branches, or a stacked geometry that `fits` refuses.
fn stack_branches<'a>(
    lin: &Linear<'_>,
    branches: impl Iterator<Item = (ArrayViewD<'a, f32>, ArrayViewD<'a, f32>)>,
    fits: impl FnOnce(&kernels::ConvGeometry) -> bool,
) -> Option<(kernels::ConvGeometry, ArrayD<f32>, ArrayD<f32>)> {
    let LinearKind::Conv(g) = &lin.kind else {
        return None;
    };
    let (ws, xs): (Vec<_>, Vec<_>) = branches.unzip();
    if ws.len() < 2 {
        return None;
    }
    let [c, _, _] = g.input_shape();
    let stacked = g.with_input_channels(c * ws.len())?;
    if !fits(&stacked) {
        return None;
    }
    let w = ndarray::concatenate(Axis(1), &ws).ok()?;
    let x = ndarray::concatenate(Axis(1), &xs).ok()?;
    Some((stacked, w, x))
}

/// [`branch_sum`] in f32 of two or more live branches (`((w_k, x_k), c_k)`, `c_k` the sign) of a
/// convolution into at most [`STACKED_MAX_CHANNELS`] input channels, as one convolution over
/// the stacked branches ([`stack_branches`], each sign folded into its weights): the sum over
/// the branches is then part of each output's sum, and the layer's output is written once
/// instead of once per branch and again for their sum. `None` where that does not apply.
fn stacked_forward<'a>(
    lin: &Linear<'_>,
    branches: impl Iterator<Item = ((ArrayViewD<'a, f32>, ArrayViewD<'a, f32>), f32)>,
) -> Option<ArrayD<f32>> {
    let (operands, signs): (Vec<_>, Vec<f32>) = branches.unzip();
    let (g, mut w, x) = stack_branches(lin, operands.into_iter(), |g| {
        g.input_shape()[0] <= STACKED_MAX_CHANNELS
    })?;
    let c = w.shape()[1] / signs.len();
    for (i, &sign) in signs.iter().enumerate() {
        if sign != 1.0 {
            w.slice_axis_mut(Axis(1), Slice::from(i * c..(i + 1) * c))
                .mapv_inplace(|v| v * sign);
        }
    }
    Some(
        kernels::conv2d_forward(
            x.view().into_dimensionality().ok()?,
            w.view().into_dimensionality().ok()?,
            &g,
        )
        .into_dyn(),
    )
}

/// The most input channels [`stacked_forward`] stacks: an RGB layer's branches (z^B's two, z⁺'s
/// two on a signed input), whose separate convolutions are too short to use the machine well.
const STACKED_MAX_CHANNELS: usize = 8;

/// The sign every value of a modified input or weight has (`Some(1.0)`, `Some(-1.0)`), or
/// `None` when it can have both (or is all zero, which a dead branch already covers).
fn definite_sign(values: ArrayViewD<'_, f32>) -> Option<f32> {
    match signs(values) {
        (true, false) => Some(1.0),
        (false, true) => Some(-1.0),
        _ => None,
    }
}

/// `x_k ⊙ T(r / stab(d + b), w_k)` for each of a convolution's `branches` (`(w_k, x_k)`), as
/// one transpose over the branches' weights stacked as input channels, with the division (in
/// f64, as `divide_rows`) as the relevance is read: branch `k`'s result is channels
/// `k·C .. (k+1)·C` of the returned array (`C` the layer's input channels), every value equal to
/// the branch's own transpose of the divided relevance. None, having done nothing, where the
/// kernels would not run it in one pass (see `kernels::conv2d_ratio_transpose_mul`).
fn stacked_ratio_transpose<'a>(
    lin: &Linear<'_>,
    r: ArrayViewD<'_, f32>,
    d: ArrayViewD<'_, f32>,
    stab: Stabilizer,
    bias: Option<&[f64]>,
    branches: impl Iterator<Item = (ArrayViewD<'a, f32>, ArrayViewD<'a, f32>)>,
    maps: usize,
) -> Option<ArrayD<f32>> {
    let rows = r.shape()[0];
    let (stacked, w, x) = stack_branches(lin, branches, |g| g.transposes_fused(rows))?;
    let divide = kernels::Divide {
        d: d.into_dimensionality().ok()?,
        stab,
        bias,
        f64: true,
    };
    kernels::conv2d_ratio_transpose_mul(
        r.into_dimensionality().ok()?,
        divide,
        w.view().into_dimensionality().ok()?,
        &stacked,
        x.view().into_dimensionality().ok()?,
        maps,
    )
    .map(|out| out.into_dyn())
}

/// `acc + c·g` (`c·g` when there is no `acc` yet).
fn add_scaled<'g>(
    acc: Option<ArrayD<f32>>,
    g: impl Into<CowArray<'g, f32, ndarray::IxDyn>>,
    c: f32,
) -> ArrayD<f32> {
    let g = g.into();
    match acc {
        None if c == 1.0 => g.into_owned(),
        None => g.mapv(|v| v * c),
        Some(mut acc) => {
            acc.scaled_add(c, &g);
            acc
        }
    }
}

/// `r_m / stab(d_{m / maps} + bias)` row by row, the sum and the division in f64, in `own`
/// (the relevance's own array, when a term takes it) or in a new array read from `r`; `bias`
/// has one value per output unit (the second axis).
fn divide_rows<A: Copy + Into<f64> + Sync>(
    r: &RelevanceIn<'_>,
    own: Option<ArrayD<f32>>,
    d: &ArrayD<A>,
    bias: Option<&[f64]>,
    maps: usize,
    stab: Stabilizer,
) -> ArrayD<f32> {
    let d = d.as_standard_layout();
    let ds = d.as_slice().expect("standard layout");
    let row = (ds.len() / d.shape()[0].max(1)).max(1);
    let units = d.shape().get(1).copied().unwrap_or(1).max(1);
    let per_unit = (row / units).max(1);
    // Positions `span` of row `m` in runs of one output unit each (one bias value):
    // `run(unit's bias, start, end)`.
    let by_unit = |span: std::ops::Range<usize>, run: &mut dyn FnMut(f64, usize, usize)| {
        let mut i = span.start;
        while i < span.end {
            let u = i / per_unit;
            let end = ((u + 1) * per_unit).min(span.end);
            run(bias.map_or(0.0, |b| b[u]), i, end);
            i = end;
        }
    };
    let divided = move |rv: f32, dv: A, b: f64| stab.divide_f64(rv, dv.into() + b);
    if let Some(mut s) = own {
        let ss = s.as_slice_mut().expect("standard layout");
        // Rows in parallel, long rows in pieces (a group of one image may have one row).
        let piece = row.min(1 << 16);
        ss.par_chunks_mut(row).enumerate().for_each(|(m, chunk)| {
            let drow = &ds[(m / maps) * row..][..row];
            chunk
                .par_chunks_mut(piece)
                .enumerate()
                .for_each(|(p, part)| {
                    let start = p * piece;
                    by_unit(start..start + part.len(), &mut |b, lo, hi| {
                        let values = &mut part[lo - start..hi - start];
                        for (v, &dv) in values.iter_mut().zip(&drow[lo..hi]) {
                            *v = divided(*v, dv, b);
                        }
                    });
                });
        });
        return s;
    }
    let r = r.view();
    let r = r.as_standard_layout();
    let rs = r.as_slice().expect("standard layout");
    let out = kernels::par_rows_with(rs.len() / row, row, |m, span, out| {
        let drow = &ds[(m / maps) * row..][..row];
        let rrow = &rs[m * row..][..row];
        by_unit(span, &mut |b, lo, hi| {
            out.extend(
                rrow[lo..hi]
                    .iter()
                    .zip(&drow[lo..hi])
                    .map(|(&rv, &dv)| divided(rv, dv, b)),
            )
        });
    });
    ArrayD::from_shape_vec(r.raw_dim(), out).expect("same length as r")
}

/// How many producers back [`non_negative`] looks.
const NON_NEGATIVE_DEPTH: usize = 8;

/// Whether the graph makes every value of tensor `name` non-negative (or NaN): the output of a
/// ReLU or of a Clip from 0 up, or of pools, shape-only ops ([`Op::is_shape_only`]) and
/// concatenations of such tensors, looking at most `depth` producers back.
fn non_negative(g: &lrp_ir::Graph, name: &str, depth: usize) -> bool {
    let Some(node) = g.node_id(name).map(|id| &g.nodes()[id]) else {
        return false;
    };
    match &node.op {
        Op::Relu => true,
        Op::Clip { min, .. } => *min >= 0.0,
        op if op.is_shape_only()
            || matches!(
                op,
                Op::MaxPool { .. }
                    | Op::AvgPool { .. }
                    | Op::GlobalAvgPool
                    | Op::GlobalMaxPool
                    | Op::Concat { .. }
            ) =>
        {
            depth > 0
                && !node.inputs.is_empty()
                && node.inputs.iter().all(|s| non_negative(g, s, depth - 1))
        }
        _ => false,
    }
}

/// Whether `x` has positive and negative values.
fn signs(x: ArrayViewD<'_, f32>) -> (bool, bool) {
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    xs.par_chunks(1 << 16)
        .map(|c| {
            c.iter()
                .fold((false, false), |(p, n), &v| (p | (v > 0.0), n | (v < 0.0)))
        })
        .reduce(|| (false, false), |a, b| (a.0 | b.0, a.1 | b.1))
}

/// What `x⁺` (or `x⁻`) of an `x` with the given [`signs`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// All zero: the branch adds nothing.
    Zero,
    /// `x` itself.
    Whole,
    /// Neither: it has to be computed.
    Some,
}

/// [`Part`] of `x⁺` (`positive`) or `x⁻` for `x` with `(has positive, has negative)` values.
fn part_of(positive: bool, (pos, neg): (bool, bool)) -> Part {
    let (wanted, other) = if positive { (pos, neg) } else { (neg, pos) };
    match (wanted, other) {
        (false, _) => Part::Zero,
        (true, false) => Part::Whole,
        (true, true) => Part::Some,
    }
}

/// Fills every position of `x`'s shape with `values` (one value or one per channel, axis 1).
fn filled(x: ArrayViewD<'_, f32>, values: &[f32]) -> Result<ArrayD<f32>, String> {
    let mut out = ArrayD::zeros(x.raw_dim());
    if values.len() == 1 {
        out.fill(values[0]);
        return Ok(out);
    }
    let channels = x.shape().get(1).copied().unwrap_or(0);
    if values.len() != channels {
        return Err(format!(
            "{} bound values given, but the layer's input has {channels} channels",
            values.len()
        ));
    }
    for (c, mut lane) in out.axis_iter_mut(Axis(1)).enumerate() {
        lane.fill(values[c]);
    }
    Ok(out)
}

impl Rule for BasicRule {
    fn relevance(
        &self,
        ctx: &NodeContext<'_>,
        r_out: ArrayViewD<'_, f32>,
    ) -> Result<Vec<ArrayD<f32>>, String> {
        self.relevance_of(ctx, RelevanceIn::View(r_out))
    }

    fn relevance_owned(
        &self,
        ctx: &NodeContext<'_>,
        r_out: ArrayD<f32>,
    ) -> Result<Vec<ArrayD<f32>>, String> {
        self.relevance_of(ctx, RelevanceIn::Owned(Some(r_out)))
    }

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn reads_output(&self) -> bool {
        self.terms.iter().any(Term::reads_output)
    }

    fn zero_input_relevance(&self, _op: &Op) -> ZeroInput {
        let scaled = self.terms.iter().flat_map(|t| &t.branches).all(|b| {
            matches!(
                b.input,
                InputMod::Identity | InputMod::Positive | InputMod::Negative
            )
        });
        if scaled {
            ZeroInput::Zero
        } else {
            ZeroInput::Unknown
        }
    }

    fn accepts_rectified_output(&self) -> bool {
        nonzero_at_zero(self.stabilizer)
    }
}

/// Whether `stab(0)` is a nonzero finite number, so that relevance 0 divided by the stabilised
/// 0 is 0 (see [`Rule::accepts_rectified_output`]).
pub(crate) fn nonzero_at_zero(stab: Stabilizer) -> bool {
    let d = stab.apply(0.0);
    d != 0.0 && d.is_finite()
}

/// The output relevance a [`BasicRule`] gets: a view, or the array itself, which the last term
/// divides in place.
enum RelevanceIn<'r> {
    View(ArrayViewD<'r, f32>),
    Owned(Option<ArrayD<f32>>),
}

impl RelevanceIn<'_> {
    /// The relevance, for a term that does not take the array.
    fn view(&self) -> ArrayViewD<'_, f32> {
        match self {
            RelevanceIn::View(v) => v.view(),
            RelevanceIn::Owned(Some(a)) => a.view(),
            RelevanceIn::Owned(None) => unreachable!("only the last term takes the array"),
        }
    }
}

impl BasicRule {
    /// The rule's relevance for the output relevance `r_in`.
    fn relevance_of(
        &self,
        ctx: &NodeContext<'_>,
        mut r_in: RelevanceIn<'_>,
    ) -> Result<Vec<ArrayD<f32>>, String> {
        let lin = ctx
            .linear()
            .ok_or_else(|| format!("{} applies to Conv and Dense layers only", self.describe()))?;
        let x = ctx.inputs[0].view();
        let z = ctx.output.view();
        let maps = ctx.maps;
        let bounds = ctx.bounds.or(self.bounds.as_ref());
        // Whether x has positive and negative values: scanned once, and only if a branch asks;
        // a tensor the graph makes non-negative (a ReLU's output, pooled) needs no scan (its
        // positive part is all of it, its negative part nothing).
        let x_signs = std::cell::OnceCell::new();
        let x_signs = || {
            *x_signs.get_or_init(|| match ctx.node().inputs.first() {
                Some(name) if non_negative(ctx.graph, name, NON_NEGATIVE_DEPTH) => (true, false),
                _ => signs(x.view()),
            })
        };
        let mut result: Option<ArrayD<f32>> = None;
        for (ti, t) in self.terms.iter().enumerate() {
            // The denominator, per image.
            let plain = t.is_plain();
            let mut inputs = Vec::with_capacity(t.branches.len());
            let mut weights = Vec::with_capacity(t.branches.len());
            let mut live = Vec::with_capacity(t.branches.len());
            let mut mapped: Vec<Option<ParamMod>> = Vec::with_capacity(t.branches.len());
            for b in &t.branches {
                // x⁺ of a non-negative x is x itself (no copy); x⁻ of it is 0, and a branch
                // with an all-zero input adds exactly nothing: skip its forward and transpose.
                let (xi, dead) = match b.input {
                    InputMod::Identity => (None, false),
                    InputMod::Positive | InputMod::Negative => {
                        match part_of(b.input == InputMod::Positive, x_signs()) {
                            Part::Zero => (None, true),
                            Part::Whole => (None, false),
                            Part::Some if b.input == InputMod::Positive => {
                                (Some(x.mapv(|v| v.max(0.0))), false)
                            }
                            Part::Some => (Some(x.mapv(|v| v.min(0.0))), false),
                        }
                    }
                    InputMod::Ones => (Some(x.mapv(|_| 1.0)), false),
                    InputMod::Low | InputMod::High | InputMod::MinusLow | InputMod::MinusHigh => {
                        let bd = bounds.ok_or("a bounded rule needs low/high bounds")?;
                        let v = if matches!(b.input, InputMod::Low | InputMod::MinusLow) {
                            &bd.low
                        } else {
                            &bd.high
                        };
                        let mut a = filled(x.view(), v)?;
                        if matches!(b.input, InputMod::MinusLow | InputMod::MinusHigh) {
                            ndarray::Zip::from(&mut a)
                                .and(&x)
                                .for_each(|a, &xv| *a = xv - *a);
                        }
                        (Some(a), false)
                    }
                };
                live.push(!dead);
                // A large Dense weight is mapped block by block in each product, not cached.
                let map = !dead
                    && b.param != ParamMod::Identity
                    && matches!(lin.kind, LinearKind::Dense)
                    && lin.weight.len() >= self.mapped_min_elements;
                mapped.push(map.then_some(b.param));
                weights.push(if dead || map {
                    None
                } else {
                    self.cache.get(lin.weight.view(), b.param)
                });
                inputs.push(xi);
            }
            if !live.contains(&true) {
                continue;
            }
            let stab = self.stabilizer;
            // The plain rule on a convolution: x ⊙ Tᵀ(R / stab(z)) in one pass where the kernels
            // can (the division as the relevance is read, the product as the result is written).
            if plain
                && t.mask == OutputMask::All
                && let Some(g) = lin.ratio_transpose_mul(
                    r_in.view(),
                    z.view(),
                    stab,
                    None,
                    false,
                    lin.weight.view(),
                    x.view(),
                    maps,
                )
            {
                result = Some(add_scaled(result, g, t.coef));
                continue;
            }
            // s = R / stab(Z_t), per relevance map: in R's own array for the last term when it
            // was handed over.
            let own = match &mut r_in {
                RelevanceIn::Owned(a)
                    if ti + 1 == self.terms.len()
                        && a.as_ref().is_some_and(|a| a.is_standard_layout()) =>
                {
                    a.take()
                }
                _ => None,
            };
            let mut s = if plain {
                match own {
                    Some(mut r) => {
                        zip_rows(&mut r, z.view(), maps, |r, d| *r /= stab.apply(d));
                        r
                    }
                    None => map_rows(r_in.view(), z.view(), maps, |r, d| r / stab.apply(d)),
                }
            } else {
                // The branch sum cannot cancel when every live branch's products have one sign.
                let definite = || {
                    let mut sign = None;
                    for (k, b) in t.branches.iter().enumerate().filter(|(k, _)| live[*k]) {
                        let xs = match b.input {
                            InputMod::Positive | InputMod::Ones => 1.0,
                            InputMod::Negative => -1.0,
                            InputMod::Identity => match x_signs() {
                                (_, false) => 1.0,
                                (false, true) => -1.0,
                                (true, true) => return None,
                            },
                            InputMod::Low
                            | InputMod::High
                            | InputMod::MinusLow
                            | InputMod::MinusHigh => {
                                definite_sign(inputs[k].as_ref().expect("filled").view())?
                            }
                        };
                        let ws = match b.param {
                            ParamMod::Positive | ParamMod::Squared | ParamMod::Ones => 1.0,
                            ParamMod::Negative => -1.0,
                            // Weights of both signs, in practice: not worth a scan.
                            ParamMod::Identity | ParamMod::Gamma { .. } => return None,
                        };
                        let p = xs * ws * b.sign.signum();
                        if sign.is_some_and(|q| q != p) {
                            return None;
                        }
                        sign = Some(p);
                    }
                    sign
                };
                let bias = lin
                    .bias
                    .as_ref()
                    .and_then(|b| modify_bias(b.view(), t.bias));
                let bias64: Option<Vec<f64>> =
                    bias.map(|b| b.iter().map(|&v| f64::from(v)).collect());
                // The live branch of an unmasked term with only one: its steps may run fused.
                let single = (t.mask == OutputMask::All
                    && live.iter().filter(|&&l| l).count() == 1)
                    .then(|| live.iter().position(|&l| l))
                    .flatten();
                if !self.f64_denominators || definite().is_some() {
                    // A large Dense weight: the denominators, the division and the transpose in
                    // one pass over the weight.
                    if let Some(k) = single
                        && let Some(m) = mapped[k]
                    {
                        let r = own.as_ref().map_or_else(|| r_in.view(), |a| a.view());
                        let xi = inputs[k].as_ref().map_or(x.view(), |a| a.view());
                        let mut g = with_param_mod!(m, f => kernels::dense_ratio_transpose_mapped(
                            two(r),
                            two(xi.view()),
                            two(lin.weight.view()),
                            f,
                            t.branches[k].sign,
                            stab,
                            bias64.as_deref(),
                            maps,
                        ))
                        .into_dyn();
                        mul_rows(&mut g, xi, maps);
                        result = Some(add_scaled(result, g, t.coef * t.branches[k].sign));
                        continue;
                    }
                    // The live branches' weights and inputs.
                    let ks: Vec<usize> = (0..live.len()).filter(|&k| live[k]).collect();
                    let operands = |k: usize| {
                        (
                            weights[k]
                                .as_deref()
                                .map_or(lin.weight.view(), |w| w.view()),
                            inputs[k].as_ref().map_or(x.view(), |a| a.view()),
                        )
                    };
                    let unmapped = mapped.iter().all(Option::is_none);
                    let stacked = unmapped
                        .then(|| {
                            stacked_forward(
                                &lin,
                                ks.iter().map(|&k| (operands(k), t.branches[k].sign)),
                            )
                        })
                        .flatten();
                    let d = stacked.unwrap_or_else(|| {
                        branch_sum(t, &lin, x.view(), &inputs, &weights, &live, |k, a, w| {
                            match mapped[k] {
                                Some(m) => {
                                    with_param_mod!(m, f => kernels::dense_forward_mapped(two(a), two(w), f))
                                        .into_dyn()
                                }
                                None => lin.forward(a, w),
                            }
                        })
                    });
                    // A convolution: the division, the transpose and the product in one pass
                    // where the kernels can.
                    if let Some(k) = single
                        && mapped[k].is_none()
                        && let (wk, xk) = operands(k)
                        && let Some(g) = lin.ratio_transpose_mul(
                            own.as_ref().map_or_else(|| r_in.view(), |a| a.view()),
                            d.view(),
                            stab,
                            bias64.as_deref(),
                            true,
                            wk,
                            xk,
                            maps,
                        )
                    {
                        result = Some(add_scaled(result, g, t.coef * t.branches[k].sign));
                        continue;
                    }
                    // Several branches on a convolution: their transposes as one, the division
                    // as it is read (the same values as dividing first, branch by branch).
                    if single.is_none()
                        && t.mask == OutputMask::All
                        && unmapped
                        && let Some(stacked) = stacked_ratio_transpose(
                            &lin,
                            own.as_ref().map_or_else(|| r_in.view(), |a| a.view()),
                            d.view(),
                            stab,
                            bias64.as_deref(),
                            ks.iter().map(|&k| operands(k)),
                            maps,
                        )
                    {
                        let c = x.shape()[1];
                        for (i, &k) in ks.iter().enumerate() {
                            let g = stacked.slice_axis(Axis(1), Slice::from(i * c..(i + 1) * c));
                            result = Some(add_scaled(result, g, t.coef * t.branches[k].sign));
                        }
                        continue;
                    }
                    divide_rows(&r_in, own, &d, bias64.as_deref(), maps, stab)
                } else {
                    let d = branch_sum(t, &lin, x.view(), &inputs, &weights, &live, |k, a, w| {
                        let m = mapped[k].unwrap_or(ParamMod::Identity);
                        let w = with_param_mod!(m, f => w.mapv(|v| f64::from(f(v))));
                        lin.forward(a.mapv(f64::from).view(), w.view())
                    });
                    divide_rows(&r_in, own, &d, bias64.as_deref(), maps, stab)
                }
            };
            // Only where the term applies.
            match t.mask {
                OutputMask::All => {}
                // (A select, not a conditional store, so that the loop vectorises.)
                OutputMask::Positive => zip_rows(&mut s, z.view(), maps, |r, zv| {
                    *r = if zv <= 0.0 { 0.0 } else { *r }
                }),
                OutputMask::Negative => zip_rows(&mut s, z.view(), maps, |r, zv| {
                    *r = if zv >= 0.0 { 0.0 } else { *r }
                }),
            }
            // The last live branch may take `s` over (its transpose can be written in place).
            let last = live.iter().rposition(|&l| l).expect("a live branch");
            let mut s = Some(s);
            for (k, b) in t.branches.iter().enumerate().filter(|(k, _)| live[*k]) {
                let wi = weights[k]
                    .as_deref()
                    .map_or(lin.weight.view(), |w| w.view());
                let xi = inputs[k].as_ref().map(|a| a.view()).unwrap_or(x.view());
                let g = match mapped[k] {
                    Some(m) => {
                        let s = two(s.as_ref().expect("taken by the last branch only").view());
                        let w = two(lin.weight.view());
                        let mut g =
                            with_param_mod!(m, f => kernels::dense_transpose_mapped(s, w, f))
                                .into_dyn();
                        mul_rows(&mut g, xi, maps);
                        g
                    }
                    None if k == last => lin.transpose_mul(
                        CowArray::from(s.take().expect("taken once")),
                        wi,
                        xi,
                        maps,
                    ),
                    None => lin.transpose_mul(
                        CowArray::from(s.as_ref().expect("taken by the last branch only").view()),
                        wi,
                        xi,
                        maps,
                    ),
                };
                result = Some(add_scaled(result, g, t.coef * b.sign));
            }
        }
        let r = result.unwrap_or_else(|| repeat_rows(x.view(), maps).mapv(|_| 0.0));
        Ok(vec![r])
    }

    fn describe(&self) -> String {
        self.description.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{IxDyn, array};

    /// The graph makes a ReLU's output non-negative, and what pools and flattening make of it,
    /// but not the graph's input, a tanh's output, or a sum with one.
    #[test]
    fn non_negative_tensors_from_the_graph() {
        let node = |name: &str, op: Op, inputs: &[&str]| lrp_ir::NodeDef {
            name: name.into(),
            op,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            params: Default::default(),
        };
        let pool = Op::MaxPool {
            kernel: [2, 2],
            strides: [2, 2],
            pads: [0; 4],
            dilations: [1, 1],
            ceil_mode: false,
        };
        let def = lrp_ir::GraphDef {
            format: lrp_ir::FORMAT_VERSION,
            name: "signs".into(),
            weights: String::new(),
            input: lrp_ir::InputDef {
                name: "x".into(),
                shape: vec![1, 4, 4],
                layout: lrp_ir::Layout::NCHW,
                preprocess: None,
            },
            output: "sum".into(),
            nodes: vec![
                node("relu", Op::Relu, &["x"]),
                node("pool", pool.clone(), &["relu"]),
                node("flat", Op::Flatten, &["pool"]),
                node("tanh", Op::Tanh, &["x"]),
                node("tanh_pool", pool, &["tanh"]),
                node("sum", Op::Add, &["relu", "tanh"]),
            ],
            labels: None,
        };
        let g = lrp_ir::Graph::new(def, Default::default()).unwrap();
        for (name, want) in [
            ("relu", true),
            ("pool", true),
            ("flat", true),
            ("x", false),
            ("tanh", false),
            ("tanh_pool", false),
            ("sum", false),
        ] {
            assert_eq!(non_negative(&g, name, NON_NEGATIVE_DEPTH), want, "{name}");
        }
        // only so many producers back
        assert!(!non_negative(&g, "flat", 1));
    }

    /// The text of every built-in's terms reads back as the same terms.
    #[test]
    fn terms_text_round_trips() {
        let rules = [
            BasicRule::z(Stabilizer::SignEpsilon(1e-6)),
            BasicRule::alpha_beta(2.0, 1.0, BiasMode::Split, Stabilizer::ZeroGuard(1e-7)),
            BasicRule::gamma(0.25, true, Stabilizer::ZeroGuard(1e-7)),
            BasicRule::flat(Stabilizer::ZeroGuard(1e-7)),
            BasicRule::z_box(
                Bounds {
                    low: vec![-1.0],
                    high: vec![1.0],
                },
                Stabilizer::ZeroGuard(1e-7),
            ),
        ];
        for r in rules {
            let text = terms_text(&r.terms);
            let back: Vec<Term> = ron::from_str(&text).unwrap();
            assert_eq!(back, r.terms, "{text}");
        }
    }

    /// Only the rules whose denominator is the layer's output, or whose terms are masked by
    /// its sign, read it.
    #[test]
    fn rules_read_the_output_where_a_term_uses_z() {
        let stab = Stabilizer::ZeroGuard(1e-7);
        let bounds = Bounds {
            low: vec![-1.0],
            high: vec![1.0],
        };
        assert!(BasicRule::z(stab).reads_output());
        assert!(BasicRule::epsilon(1e-6).reads_output());
        assert!(!BasicRule::alpha_beta(1.0, 0.0, BiasMode::Full, stab).reads_output());
        assert!(!BasicRule::alpha_beta(2.0, 1.0, BiasMode::Split, stab).reads_output());
        assert!(!BasicRule::z_box(bounds, stab).reads_output());
        assert!(!BasicRule::flat(stab).reads_output());
        assert!(!BasicRule::w_square(stab).reads_output());
        // Zennit's generalised γ splits by the sign of z; the plain form does not.
        assert!(BasicRule::gamma(0.25, true, stab).reads_output());
        assert!(!BasicRule::gamma(0.25, false, stab).reads_output());
        // A plain term with a modified bias computes its own denominator; a mask reads z.
        let mut r = BasicRule::z(stab);
        r.terms[0].bias = BiasMod::None;
        assert!(!r.reads_output());
        r.terms[0].mask = OutputMask::Positive;
        assert!(r.reads_output());
    }

    /// Rules whose every branch multiplies by `x`, `x⁺` or `x⁻` send nothing to zero inputs;
    /// those that feed bounds or ones do. A rectified output serves where `stab(0) ≠ 0`.
    #[test]
    fn zero_inputs_get_no_relevance_where_every_branch_scales_by_x() {
        let stab = Stabilizer::ZeroGuard(1e-7);
        let bounds = Bounds {
            low: vec![-1.0],
            high: vec![1.0],
        };
        let op = Op::Dense;
        let zero = |r: BasicRule| r.zero_input_relevance(&op);
        assert_eq!(zero(BasicRule::epsilon(1e-6)), ZeroInput::Zero);
        assert_eq!(zero(BasicRule::z(stab)), ZeroInput::Zero);
        assert_eq!(
            zero(BasicRule::alpha_beta(2.0, 1.0, BiasMode::Split, stab)),
            ZeroInput::Zero
        );
        assert_eq!(zero(BasicRule::gamma(0.25, true, stab)), ZeroInput::Zero);
        assert_eq!(zero(BasicRule::z_box(bounds, stab)), ZeroInput::Unknown);
        assert_eq!(zero(BasicRule::flat(stab)), ZeroInput::Unknown);
        assert_eq!(zero(BasicRule::w_square(stab)), ZeroInput::Unknown);
        assert!(BasicRule::z(stab).accepts_rectified_output());
        assert!(BasicRule::epsilon(1e-6).accepts_rectified_output());
        assert!(!BasicRule::z(Stabilizer::SignEpsilon(0.0)).accepts_rectified_output());
        assert!(!BasicRule::z(Stabilizer::ZeroGuard(0.0)).accepts_rectified_output());
    }

    /// The stacked forward of an RGB layer's two branches (one with sign −1) equals the sum of
    /// their forwards, to f32 rounding; it declines a lone branch and too many channels.
    #[test]
    fn stacked_branches_sum_as_separate_forwards() {
        let op = Op::Conv {
            kernel: [3, 3],
            strides: [1, 1],
            pads: [1, 1, 1, 1],
            dilations: [1, 1],
            groups: 1,
        };
        let (c, o, h) = (3, 5, 7);
        let ramp = |n: usize, k: f32| {
            (0..n)
                .map(|i| ((i as f32 * k).sin() * 2.0).round() / 2.0 + 0.25)
                .collect::<Vec<f32>>()
        };
        let w = ArrayD::from_shape_vec(IxDyn(&[o, c, 3, 3]), ramp(o * c * 9, 0.7)).unwrap();
        let x = ArrayD::from_shape_vec(IxDyn(&[2, c, h, h]), ramp(2 * c * h * h, 0.3)).unwrap();
        let shift = x.mapv(|v| v - 1.5);
        let g = kernels::ConvGeometry::new(&op, &[c, h, h], w.shape()).unwrap();
        let lin = Linear {
            kind: LinearKind::Conv(g),
            weight: w.view(),
            bias: None,
        };
        let t = term(
            1.0,
            vec![
                br(1.0, InputMod::Identity, ParamMod::Positive),
                br(-1.0, InputMod::MinusLow, ParamMod::Negative),
            ],
            BiasMod::Identity,
            OutputMask::All,
        );
        let wp = Arc::new(w.mapv(|v| v.max(0.0)));
        let wn = Arc::new(w.mapv(|v| v.min(0.0)));
        let inputs = vec![None, Some(shift)];
        let weights = vec![Some(wp), Some(wn)];
        let live = [true, true];
        // the branches as the rule hands them over: ((w_k, x_k), sign)
        let branch = |k: usize| {
            let w = weights[k].as_deref().expect("modified").view();
            let xk = inputs[k].as_ref().map_or(x.view(), |a| a.view());
            ((w, xk), t.branches[k].sign)
        };
        let got = stacked_forward(&lin, (0..2).map(branch)).unwrap();
        let want = branch_sum(&t, &lin, x.view(), &inputs, &weights, &live, |_, a, w| {
            lin.forward(a, w)
        });
        assert_eq!(got.shape(), want.shape());
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-5 * scale, "{a} against {b}");
        }
        // one live branch; three branches of 3 channels (9 > 8)
        assert!(stacked_forward(&lin, (0..1).map(branch)).is_none());
        assert!(stacked_forward(&lin, [0, 1, 0].into_iter().map(branch)).is_none());
    }

    #[test]
    fn modified_weights_are_made_once_per_tensor_and_modifier() {
        let cache = WeightCache::default();
        let w = array![[1.0f32, -2.0], [-3.0, 4.0]].into_dyn();
        let a = cache.get(w.view(), ParamMod::Positive).unwrap();
        let b = cache.get(w.view(), ParamMod::Positive).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(*a, array![[1.0f32, 0.0], [0.0, 4.0]].into_dyn());
        let n = cache.get(w.view(), ParamMod::Negative).unwrap();
        assert_eq!(*n, array![[0.0f32, -2.0], [-3.0, 0.0]].into_dyn());
        assert!(cache.get(w.view(), ParamMod::Identity).is_none());
        // Another tensor of the same shape (other address, other values) gets its own.
        let w2 = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![5.0f32, 6.0, 7.0, -8.0]).unwrap();
        let c = cache.get(w2.view(), ParamMod::Positive).unwrap();
        assert_eq!(*c, array![[5.0f32, 6.0], [7.0, 0.0]].into_dyn());
        assert_eq!(cache.0.lock().unwrap().len(), 3);
    }

    #[test]
    fn positive_and_negative_parts_by_sign() {
        // (has positive, has negative) → x⁺, x⁻. After a ReLU x⁻ is all zero: that branch
        // must be left out (it was once computed as a zero forward and a zero transpose).
        let cases = [
            ((true, false), Part::Whole, Part::Zero),
            ((false, true), Part::Zero, Part::Whole),
            ((true, true), Part::Some, Part::Some),
            ((false, false), Part::Zero, Part::Zero),
        ];
        for (signs, plus, minus) in cases {
            assert_eq!(part_of(true, signs), plus, "x⁺ of {signs:?}");
            assert_eq!(part_of(false, signs), minus, "x⁻ of {signs:?}");
        }
    }

    #[test]
    fn divisions_in_place_match_the_definition_across_pieces_and_units() {
        // Rows of 3 units × 22500 values: longer than one parallel piece (65536), whose edge
        // falls inside a unit; 2 images × 2 maps.
        let (n, maps, units, per_unit) = (2, 2, 3, 22500);
        let row = units * per_unit;
        let d = ArrayD::from_shape_fn(IxDyn(&[n, units, per_unit]), |i| {
            ((i[0] * 7 + i[1] * 3 + i[2]) % 11) as f32 - 5.0
        });
        let r = ArrayD::from_shape_fn(IxDyn(&[n * maps, units, per_unit]), |i| {
            1.0 + ((i[0] + i[1] + i[2]) % 5) as f32
        });
        let bias = [0.5f64, -0.25, 0.0];
        let stab = Stabilizer::SignEpsilon(0.1);
        let want = ArrayD::from_shape_fn(r.raw_dim(), |i| {
            let dv = f64::from(d[[i[0] / maps, i[1], i[2]]]) + bias[i[1]];
            (f64::from(r[[i[0], i[1], i[2]]]) / stab.apply_f64(dv)) as f32
        });
        let in_place = divide_rows(
            &RelevanceIn::Owned(None),
            Some(r.clone()),
            &d,
            Some(&bias),
            maps,
            stab,
        );
        let read = divide_rows(
            &RelevanceIn::View(r.view()),
            None,
            &d,
            Some(&bias),
            maps,
            stab,
        );
        assert_eq!(in_place, want);
        assert_eq!(read, want);
        assert_eq!(want.len(), n * maps * row);
    }

    #[test]
    fn signs_and_definite_signs() {
        assert_eq!(
            signs(array![0.0f32, 1.0, 2.0].into_dyn().view()),
            (true, false)
        );
        assert_eq!(signs(array![0.0f32, -1.0].into_dyn().view()), (false, true));
        assert_eq!(signs(array![0.0f32, 0.0].into_dyn().view()), (false, false));
        assert_eq!(
            definite_sign(array![0.0f32, 3.0].into_dyn().view()),
            Some(1.0)
        );
        assert_eq!(definite_sign(array![-1.0f32, 3.0].into_dyn().view()), None);
        assert_eq!(definite_sign(array![0.0f32].into_dyn().view()), None);
    }

    #[test]
    fn bias_is_added_per_output_unit_in_the_division() {
        // d: [N = 1, units = 2, 2 positions]; bias per unit; two maps.
        let d = ArrayD::from_shape_vec(IxDyn(&[1, 2, 2]), vec![1.0f32, 2.0, 3.0, 4.0]).unwrap();
        let r = ArrayD::from_elem(IxDyn(&[2, 2, 2]), 12.0f32);
        let stab = Stabilizer::SignEpsilon(0.0);
        let bias = Some(&[1.0, -1.0][..]);
        let from_view = divide_rows(&RelevanceIn::View(r.view()), None, &d, bias, 2, stab);
        // The same in the relevance's own array.
        let in_place = divide_rows(
            &RelevanceIn::Owned(None),
            Some(r.clone()),
            &d,
            bias,
            2,
            stab,
        );
        let want = [6.0f32, 4.0, 6.0, 4.0];
        for s in [from_view, in_place] {
            for m in 0..2 {
                let row: Vec<f32> = s.index_axis(Axis(0), m).iter().copied().collect();
                assert_eq!(row, want, "map {m}");
            }
        }
    }
}
