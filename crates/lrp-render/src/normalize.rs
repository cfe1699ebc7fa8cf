//! Normalisation of a 2-D relevance map to colormap positions in [0, 1], with an optional
//! percentile clip.

use std::str::FromStr;

use ndarray::{Array2, ArrayView2};

use crate::RenderError;
use crate::names::named_enum;

/// How relevance values become colormap positions in [0, 1], given a scale `s` (the maximum, or
/// the clipping percentile; see [`normalize`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Normalization {
    /// `h ∈ [−s, s]` → `[0, 1]`, with 0 at ½: signed relevance on a diverging map. The default.
    #[default]
    Symmetric,
    /// `|h| ∈ [0, s]` → `[0, 1]`: magnitude regardless of sign.
    Absolute,
    /// `max(h, 0) ∈ [0, s]` → `[0, 1]`: positive relevance only; negative values get 0.
    Positive,
}

named_enum!(Normalization, "normalization", {
    Symmetric => "symmetric",
    Absolute => "absolute",
    Positive => "positive",
});

impl Normalization {
    /// The position that relevance 0 (and NaN) gets: ½ for `Symmetric`, 0 otherwise.
    pub fn zero(self) -> f32 {
        match self {
            Normalization::Symmetric => 0.5,
            Normalization::Absolute | Normalization::Positive => 0.0,
        }
    }

    /// The magnitude whose scale this normalisation uses: `|h|`, or `max(h, 0)` for `Positive`.
    fn magnitude(self, v: f32) -> f32 {
        match self {
            Normalization::Symmetric | Normalization::Absolute => v.abs(),
            Normalization::Positive => v.max(0.0),
        }
    }
}

/// A percentile in (0, 100], for clipping the scale of a heatmap.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Percentile(f32);

impl Percentile {
    /// The percentile `p`, or an error when `p` is not a number in (0, 100].
    pub fn new(p: f32) -> Result<Self, RenderError> {
        if p > 0.0 && p <= 100.0 {
            Ok(Percentile(p))
        } else {
            Err(RenderError::InvalidPercentile(p.to_string()))
        }
    }

    /// The percentile, in (0, 100].
    pub fn get(self) -> f32 {
        self.0
    }
}

impl TryFrom<f32> for Percentile {
    type Error = RenderError;

    fn try_from(p: f32) -> Result<Self, Self::Error> {
        Percentile::new(p)
    }
}

impl FromStr for Percentile {
    type Err = RenderError;

    /// Parses a number such as `99` or `99.5` (a trailing `%` is allowed).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let t = t.strip_suffix('%').unwrap_or(t);
        t.parse::<f32>()
            .ok()
            .and_then(|p| Percentile::new(p).ok())
            .ok_or_else(|| RenderError::InvalidPercentile(s.to_string()))
    }
}

impl std::fmt::Display for Percentile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The scale of `h` for `norm`: the largest finite magnitude (`|h|`, or `max(h, 0)` for
/// `Positive`), or with `clip` that percentile of the finite magnitudes (linear interpolation
/// between order statistics, as numpy's default). A percentile of 0 falls back to the maximum;
/// a scale of 0 (all-zero map) becomes 1, so zeros stay at the zero position.
pub fn scale(h: ArrayView2<'_, f32>, norm: Normalization, clip: Option<Percentile>) -> f32 {
    let mags = h
        .iter()
        .map(|&v| norm.magnitude(v))
        .filter(|m| m.is_finite());
    let max = mags.clone().fold(0f32, f32::max);
    let s = match clip {
        Some(p) if max > 0.0 => {
            let mut v: Vec<f32> = mags.collect();
            let q = percentile(&mut v, p.get());
            if q > 0.0 { q } else { max }
        }
        _ => max,
    };
    if s > 0.0 { s } else { 1.0 }
}

/// The `p`-th percentile of `v` (non-empty, finite), linearly interpolated.
fn percentile(v: &mut [f32], p: f32) -> f32 {
    v.sort_unstable_by(f32::total_cmp);
    let pos = f64::from(p) / 100.0 * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    let f = (pos - lo as f64) as f32;
    v[lo] + (v[hi] - v[lo]) * f
}

/// Maps each value of `h` to a colormap position in [0, 1] with `norm` and the [`scale`] for
/// `clip`; values beyond the scale saturate at 0 or 1, NaN gets [`Normalization::zero`].
pub fn normalize(
    h: ArrayView2<'_, f32>,
    norm: Normalization,
    clip: Option<Percentile>,
) -> Array2<f32> {
    let s = scale(h, norm, clip);
    h.map(|&v| {
        if v.is_nan() {
            return norm.zero();
        }
        match norm {
            Normalization::Symmetric => ((v / s).clamp(-1.0, 1.0) + 1.0) / 2.0,
            Normalization::Absolute | Normalization::Positive => {
                (norm.magnitude(v) / s).clamp(0.0, 1.0)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn normalisations_by_hand() {
        let h = array![[-2.0f32, 0.0], [1.0, 4.0]];
        // max |h| = 4: (h / 4 + 1) / 2.
        let sym = normalize(h.view(), Normalization::Symmetric, None);
        assert_eq!(sym, array![[0.25, 0.5], [0.625, 1.0]]);
        // |h| / 4.
        let abs = normalize(h.view(), Normalization::Absolute, None);
        assert_eq!(abs, array![[0.5, 0.0], [0.25, 1.0]]);
        // max(h, 0) / max h = max(h, 0) / 4.
        let pos = normalize(h.view(), Normalization::Positive, None);
        assert_eq!(pos, array![[0.0, 0.0], [0.25, 1.0]]);
    }

    #[test]
    fn positive_scale_ignores_negative_values() {
        let h = array![[-8.0f32, 2.0]];
        assert_eq!(
            normalize(h.view(), Normalization::Positive, None),
            array![[0.0, 1.0]]
        );
        // Nothing positive: scale 1, everything at 0.
        let h = array![[-8.0f32, -2.0]];
        assert_eq!(
            normalize(h.view(), Normalization::Positive, None),
            array![[0.0, 0.0]]
        );
    }

    #[test]
    fn percentile_clip_by_hand() {
        // |h| sorted: 0, 1, 2, 3, 4; the 50th percentile is 2, the 90th 3 + 0.6 · (4 − 3).
        let h = array![[-4.0f32, -1.0, 0.0, 2.0, 3.0]];
        let p50 = Some(Percentile::new(50.0).unwrap());
        assert_eq!(scale(h.view(), Normalization::Symmetric, p50), 2.0);
        let p90 = Some(Percentile::new(90.0).unwrap());
        assert!((scale(h.view(), Normalization::Absolute, p90) - 3.6).abs() < 1e-6);
        assert_eq!(
            scale(
                h.view(),
                Normalization::Symmetric,
                Some(Percentile::new(100.0).unwrap())
            ),
            4.0
        );
        // Beyond ±2 saturates.
        assert_eq!(
            normalize(h.view(), Normalization::Symmetric, p50),
            array![[0.0, 0.25, 0.5, 1.0, 1.0]]
        );
        // Positive: h⁺ sorted 0, 0, 0, 2, 3; the 75th percentile is 2.
        let p75 = Some(Percentile::new(75.0).unwrap());
        assert_eq!(scale(h.view(), Normalization::Positive, p75), 2.0);
        // A percentile that is 0 falls back to the maximum.
        assert_eq!(scale(h.view(), Normalization::Positive, p50), 3.0);
    }

    #[test]
    fn all_zero_and_non_finite() {
        let z = Array2::<f32>::zeros((2, 2));
        for &n in Normalization::ALL {
            let clip = Some(Percentile::new(99.0).unwrap());
            for c in [None, clip] {
                let t = normalize(z.view(), n, c);
                assert!(t.iter().all(|&v| v == n.zero()), "{n}");
            }
        }
        let h = array![[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 2.0, -1.0]];
        assert_eq!(
            normalize(h.view(), Normalization::Symmetric, None),
            array![[0.5, 1.0, 0.0, 1.0, 0.25]]
        );
        assert_eq!(
            normalize(h.view(), Normalization::Absolute, None),
            array![[0.0, 1.0, 1.0, 1.0, 0.5]]
        );
        let empty = Array2::<f32>::zeros((0, 3));
        assert_eq!(
            normalize(empty.view(), Normalization::Symmetric, None).dim(),
            (0, 3)
        );
    }

    #[test]
    fn percentile_parsing() {
        assert_eq!("99.5".parse::<Percentile>().unwrap().get(), 99.5);
        assert_eq!("99%".parse::<Percentile>().unwrap().get(), 99.0);
        assert_eq!(Percentile::try_from(100.0).unwrap().get(), 100.0);
        for bad in ["0", "-1", "100.5", "NaN", "x", ""] {
            assert!(bad.parse::<Percentile>().is_err(), "{bad}");
        }
        assert!(Percentile::new(f32::NAN).is_err());
        assert_eq!(
            "abc".parse::<Normalization>().unwrap_err().to_string(),
            "unknown normalization `abc` (expected one of: symmetric, absolute, positive)"
        );
    }
}
