//! Initial relevance at the logits, and how multi-pass signals combine.

use ndarray::{Array2, ArrayD, ArrayView2, Axis};
use serde::Deserialize;

/// The initial relevance signal (SPEC.md "Initial signals").
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub enum Signal {
    /// `X_t` at the target, 0 elsewhere (`X = relu(z)` under `head_relu`, else `z`).
    Logit {
        /// Logits through a ReLU first.
        #[serde(default)]
        head_relu: bool,
    },
    /// One pass of the softmax gradient: `y_t(1 − y_t) + target_offset` at `t`, `−y_t y_n`
    /// elsewhere.
    SglrpSigned {
        /// Added to the target's term.
        #[serde(default)]
        target_offset: f64,
        /// Logits through a ReLU first (iNNvestigate 1.0.8.3's Deep Taylor).
        #[serde(default)]
        head_relu: bool,
    },
    /// Two passes (the SGLRP authors' code): target `T` from `y_t(1 − y_t) + target_offset`,
    /// dual `O` from `y_n y_t` at every `n ≠ t`, combined as `T − O·ΣT/ΣO`.
    Sglrp {
        /// Added to the target's term.
        #[serde(default)]
        target_offset: f64,
        /// Logits through a ReLU first.
        #[serde(default)]
        head_relu: bool,
    },
    /// Two passes: target from `X_t`, dual from `X_t/(C − 1)` at every `n ≠ t`, combined as
    /// `T − O·ΣT/ΣO`.
    Clrp {
        /// Logits through a ReLU first.
        #[serde(default)]
        head_relu: bool,
    },
}

/// Something about one input that the user should know (reported, not an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalNote {
    /// Under `head_relu` the target's logit is ≤ 0: the map is all zero.
    TargetLogitNonPositive,
    /// `ΣO = 0` in a two-pass signal: the map is `T` alone.
    DualSumZero,
}

impl std::fmt::Display for SignalNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignalNote::TargetLogitNonPositive => {
                write!(
                    f,
                    "the target's logit is ≤ 0 under head_relu, so the map is all zero"
                )
            }
            SignalNote::DualSumZero => write!(
                f,
                "ΣO = 0 (no relevance in the dual pass): the map is the target pass T alone"
            ),
        }
    }
}

impl Default for Signal {
    fn default() -> Self {
        Signal::Logit { head_relu: false }
    }
}

impl Signal {
    /// Relevance maps per image: 2 for the two-pass signals, else 1.
    pub fn maps(&self) -> usize {
        match self {
            Signal::Sglrp { .. } | Signal::Clrp { .. } => 2,
            _ => 1,
        }
    }

    fn head_relu(&self) -> bool {
        match *self {
            Signal::Logit { head_relu }
            | Signal::SglrpSigned { head_relu, .. }
            | Signal::Sglrp { head_relu, .. }
            | Signal::Clrp { head_relu } => head_relu,
        }
    }

    /// The initial relevance `[N·maps, C]` for logits `[N, C]` and one target per image
    /// (image-major: the target pass then the dual pass of each image), with notes per image.
    pub fn initial(
        &self,
        logits: ArrayView2<'_, f32>,
        targets: &[usize],
    ) -> (Array2<f32>, Vec<Vec<SignalNote>>) {
        let (n, c) = logits.dim();
        let k = self.maps();
        let head_relu = self.head_relu();
        let mut out = Array2::<f32>::zeros((n * k, c));
        let mut notes = vec![Vec::new(); n];
        for (i, z) in logits.outer_iter().enumerate() {
            let t = targets[i];
            let x: Vec<f64> = z
                .iter()
                .map(|&v| {
                    if head_relu {
                        (v as f64).max(0.0)
                    } else {
                        v as f64
                    }
                })
                .collect();
            // Under head_relu every class with z_n ≤ 0 gets no initial relevance.
            let live: Vec<f64> = z
                .iter()
                .map(|&v| if head_relu && v <= 0.0 { 0.0 } else { 1.0 })
                .collect();
            if head_relu && z[t] <= 0.0 {
                notes[i].push(SignalNote::TargetLogitNonPositive);
            }
            let y = softmax(&x);
            // y_t(1 − y_t), computed as y_t Σ_{n≠t} y_n: exact when y_t is close to 1.
            let rest: f64 = y
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != t)
                .map(|(_, v)| v)
                .sum();
            let grad_t = y[t] * rest;
            let mut row = |m: usize, j: usize, v: f64| out[[i * k + m, j]] = (v * live[j]) as f32;
            match *self {
                Signal::Logit { .. } => row(0, t, x[t]),
                Signal::SglrpSigned { target_offset, .. } => {
                    for j in 0..c {
                        row(
                            0,
                            j,
                            if j == t {
                                grad_t + target_offset
                            } else {
                                -y[t] * y[j]
                            },
                        );
                    }
                }
                Signal::Sglrp { target_offset, .. } => {
                    row(0, t, grad_t + target_offset);
                    for j in (0..c).filter(|&j| j != t) {
                        row(1, j, y[j] * y[t]);
                    }
                }
                Signal::Clrp { .. } => {
                    row(0, t, x[t]);
                    let share = if c > 1 { x[t] / (c - 1) as f64 } else { 0.0 };
                    for j in (0..c).filter(|&j| j != t) {
                        row(1, j, share);
                    }
                }
            }
        }
        (out, notes)
    }

    /// Combines the input relevance `[N·maps, ...]` into one map per image `[N, ...]`: the
    /// identity for one-pass signals, `T − O·ΣT/ΣO` for two-pass ones (sums in f64; `ΣO = 0`
    /// gives `T` and a note); then `max(·, 0)` if `relu`.
    pub fn combine(
        &self,
        r: ArrayD<f32>,
        relu: bool,
        notes: &mut [Vec<SignalNote>],
    ) -> ArrayD<f32> {
        let k = self.maps();
        let mut out = if k == 1 {
            r
        } else {
            let n = r.shape()[0] / k;
            let mut shape = r.shape().to_vec();
            shape[0] = n;
            let mut out = ArrayD::<f32>::zeros(shape);
            for (i, note) in notes.iter_mut().enumerate().take(n) {
                let t = r.index_axis(Axis(0), i * k);
                let o = r.index_axis(Axis(0), i * k + 1);
                let st: f64 = t.iter().map(|&v| v as f64).sum();
                let so: f64 = o.iter().map(|&v| v as f64).sum();
                let mut dst = out.index_axis_mut(Axis(0), i);
                if so == 0.0 {
                    note.push(SignalNote::DualSumZero);
                    dst.assign(&t);
                } else {
                    let ratio = st / so;
                    ndarray::Zip::from(&mut dst)
                        .and(&t)
                        .and(&o)
                        .for_each(|d, &a, &b| *d = (a as f64 - b as f64 * ratio) as f32);
                }
            }
            out
        };
        if relu {
            out.mapv_inplace(|v| v.max(0.0));
        }
        out
    }
}

/// Softmax in f64 with the maximum subtracted.
pub fn softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
    let e: Vec<f64> = z.iter().map(|&v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn sglrp_signed_is_the_softmax_gradient() {
        let z = array![[1.0f32, 2.0, 0.5]];
        let s = Signal::SglrpSigned {
            target_offset: 0.0,
            head_relu: false,
        };
        let (r, _) = s.initial(z.view(), &[1]);
        let y = softmax(&[1.0, 2.0, 0.5]);
        assert!((r[[0, 1]] as f64 - y[1] * (1.0 - y[1])).abs() < 1e-7);
        assert!((r[[0, 0]] as f64 + y[1] * y[0]).abs() < 1e-7);
        assert!(r.sum().abs() < 1e-7, "the gradient of y_t sums to 0");
    }

    #[test]
    fn saturated_softmax_keeps_its_gradient() {
        // y_t ≈ 1 − 2e-9: the naive f32 form 1 − y_t gives 0.
        let z = array![[20.0f32, 0.0, 0.0]];
        let s = Signal::Sglrp {
            target_offset: 0.0,
            head_relu: false,
        };
        let (r, _) = s.initial(z.view(), &[0]);
        let expected = 2.0 * (-20f64).exp();
        assert!(
            (r[[0, 0]] as f64 / expected - 1.0).abs() < 1e-5,
            "{}",
            r[[0, 0]]
        );
    }

    #[test]
    fn head_relu_masks_nonpositive_logits() {
        let z = array![[2.0f32, -1.0, 1.0]];
        let s = Signal::Sglrp {
            target_offset: 1e-8,
            head_relu: true,
        };
        let (r, notes) = s.initial(z.view(), &[0]);
        assert_eq!(r.shape(), &[2, 3]);
        assert_eq!(r[[1, 1]], 0.0, "z_1 ≤ 0: no dual relevance");
        assert!(r[[1, 2]] > 0.0);
        assert!(notes[0].is_empty());
        let (r, notes) = s.initial(array![[-1.0f32, 2.0, 1.0]].view(), &[0]);
        assert_eq!(r.row(0).sum(), 0.0);
        assert_eq!(notes[0], vec![SignalNote::TargetLogitNonPositive]);
    }

    #[test]
    fn clrp_dual_shares_the_target_logit() {
        let (r, _) =
            Signal::Clrp { head_relu: false }.initial(array![[3.0f32, 1.0, -2.0]].view(), &[0]);
        assert_eq!(r.row(0).to_vec(), vec![3.0, 0.0, 0.0]);
        assert_eq!(r.row(1).to_vec(), vec![0.0, 1.5, 1.5]);
    }

    #[test]
    fn two_pass_combination_sums_to_zero_and_guards_zero_dual() {
        let s = Signal::Sglrp {
            target_offset: 0.0,
            head_relu: false,
        };
        let r = array![[1.0f32, 2.0], [0.5, 0.25], [1.0, 1.0], [0.0, 0.0]].into_dyn();
        let mut notes = vec![vec![], vec![]];
        let out = s.combine(r, false, &mut notes);
        assert_eq!(out.shape(), &[2, 2]);
        // T = [1, 2], O = [0.5, 0.25]: T − O·3/0.75 = [1 − 2, 2 − 1] = [−1, 1].
        assert_eq!(
            out.index_axis(Axis(0), 0)
                .iter()
                .copied()
                .collect::<Vec<_>>(),
            vec![-1.0, 1.0]
        );
        assert_eq!(
            out.index_axis(Axis(0), 1)
                .iter()
                .copied()
                .collect::<Vec<_>>(),
            vec![1.0, 1.0]
        );
        assert_eq!(notes[1], vec![SignalNote::DualSumZero]);
    }
}
