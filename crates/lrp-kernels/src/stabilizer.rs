//! The division stabiliser of the relevance rules.

use serde::{Deserialize, Serialize};

/// How a rule keeps a denominator `d` away from zero before dividing by it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Stabilizer {
    /// `d + e·sign(d)`, with `sign(0) = +1` (Zennit everywhere; iNNvestigate's ε-rule).
    SignEpsilon(f32),
    /// `d + e` where `d == 0` exactly, `d` elsewhere (iNNvestigate's `SafeDivide`).
    ZeroGuard(f32),
}

impl Stabilizer {
    /// The stabilised denominator: `d + e·sign(d)` (sign(0) = +1) for [`SignEpsilon`], `d + e·[d == 0]`
    /// for [`ZeroGuard`]. NaN stays NaN.
    ///
    /// [`SignEpsilon`]: Stabilizer::SignEpsilon
    /// [`ZeroGuard`]: Stabilizer::ZeroGuard
    #[inline]
    pub fn apply(&self, d: f32) -> f32 {
        // One form for both, without a branch per value (the loops over whole tensors then
        // vectorise): the offset added where d > 0, d < 0 and otherwise (±0, NaN).
        let (pos, neg, zero) = self.offsets();
        d + if d > 0.0 {
            pos
        } else if d < 0.0 {
            neg
        } else {
            zero
        }
    }

    /// `r / stab(d)` with the denominator and the division in f64, rounded to f32: the rules'
    /// division by recomputed denominators (`d` the f64 sum of the branches and the bias).
    #[inline]
    pub fn divide_f64(&self, r: f32, d: f64) -> f32 {
        (f64::from(r) / self.apply_f64(d)) as f32
    }

    /// [`Stabilizer::apply`] in f64 (`e` widened from f32).
    #[inline]
    pub fn apply_f64(&self, d: f64) -> f64 {
        let (pos, neg, zero) = self.offsets();
        d + if d > 0.0 {
            f64::from(pos)
        } else if d < 0.0 {
            f64::from(neg)
        } else {
            f64::from(zero)
        }
    }

    /// The offsets added to a positive, a negative and a zero (or NaN) denominator.
    #[inline]
    fn offsets(&self) -> (f32, f32, f32) {
        match *self {
            Stabilizer::SignEpsilon(e) => (e, -e, e),
            Stabilizer::ZeroGuard(e) => (0.0, 0.0, e),
        }
    }

    /// The stabiliser's `e`.
    pub fn epsilon(&self) -> f32 {
        match *self {
            Stabilizer::SignEpsilon(e) | Stabilizer::ZeroGuard(e) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_epsilon() {
        let s = Stabilizer::SignEpsilon(0.25);
        assert_eq!(s.apply(0.0), 0.25);
        assert_eq!(s.apply(-0.0), 0.25);
        assert_eq!(s.apply(1.0), 1.25);
        assert_eq!(s.apply(-1.0), -1.25);
        assert!(s.apply(f32::NAN).is_nan());
        assert_eq!(s.apply_f64(-0.0), 0.25);
        assert_eq!(s.apply_f64(-1.0), -1.25);
        assert!(s.apply_f64(f64::NAN).is_nan());
        // r / stab(d) in f64, rounded once
        assert_eq!(s.divide_f64(1.0, -0.75), -1.0);
        assert_eq!(s.divide_f64(3.0, 0.0), 12.0);
        assert_eq!(s.divide_f64(1.0, 2.75), 1.0 / 3.0);
    }

    #[test]
    fn zero_guard() {
        let s = Stabilizer::ZeroGuard(1e-7);
        assert_eq!(s.apply(0.0), 1e-7);
        assert_eq!(s.apply(-0.0), 1e-7);
        assert_eq!(s.apply(-3.0), -3.0);
        assert_eq!(s.apply(1e-30), 1e-30);
        assert_eq!(s.apply(-1e-30), -1e-30);
        assert!(s.apply(f32::NAN).is_nan());
        assert_eq!(s.apply_f64(0.0), f64::from(1e-7f32));
        assert_eq!(s.apply_f64(-2.5), -2.5);
    }

    #[test]
    fn ron_form() {
        let s: Stabilizer = ron::from_str("SignEpsilon(1e-6)").unwrap();
        assert_eq!(s, Stabilizer::SignEpsilon(1e-6));
        let text = ron::to_string(&Stabilizer::ZeroGuard(1e-7)).unwrap();
        assert_eq!(
            ron::from_str::<Stabilizer>(&text).unwrap(),
            Stabilizer::ZeroGuard(1e-7)
        );
    }
}
