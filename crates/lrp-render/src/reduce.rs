//! Reduction of a per-sample relevance map over its channel axis to a 2-D map.

use ndarray::{Array2, ArrayView1, ArrayViewD, Axis};

use crate::ChannelAxis;
use crate::names::named_enum;

/// How the channels of one pixel become one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Reduction {
    /// The sum over channels (signed). The default, as the SGLRP paper draws heatmaps.
    #[default]
    Sum,
    /// The largest magnitude over channels, `max_c |h_c|` (never negative).
    AbsMax,
    /// The Euclidean norm over channels, `sqrt(Σ_c h_c²)` (never negative).
    L2,
}

named_enum!(Reduction, "reduction", {
    Sum => "sum",
    AbsMax => "absmax",
    L2 => "l2",
});

/// Reduces a per-sample map over its channel axis: `[C, H, W]` or `[H, W, C]` (as `channels`
/// says) → `[H, W]`. A 2-D map is returned as it is; a map of any other rank becomes one row.
/// NaN in any channel gives NaN; a map of zero channels gives zeros.
pub fn reduce_channels(
    map: ArrayViewD<'_, f32>,
    channels: ChannelAxis,
    reduction: Reduction,
) -> Array2<f32> {
    if map.ndim() == 2 {
        return map.to_owned().into_dimensionality().expect("2-D");
    }
    if map.ndim() != 3 {
        let flat: Vec<f32> = map.iter().copied().collect();
        return Array2::from_shape_vec((1, flat.len()), flat).expect("one row");
    }
    let axis = Axis(if channels == ChannelAxis::First { 0 } else { 2 });
    let reduced = map.map_axis(axis, |lane: ArrayView1<'_, f32>| match reduction {
        Reduction::AbsMax => lane.fold(0f32, |m, &v| {
            if m.is_nan() || v.is_nan() {
                f32::NAN
            } else {
                m.max(v.abs())
            }
        }),
        Reduction::L2 => lane.fold(0f32, |s, &v| s + v * v).sqrt(),
        Reduction::Sum => lane.sum(),
    });
    let (h, w) = match reduced.shape() {
        &[h, w] => (h, w),
        _ => (0, 0),
    };
    // A 3-D map less one axis is 2-D, so the reshape keeps every value.
    reduced
        .into_shape_with_order((h, w))
        .unwrap_or_else(|_| Array2::zeros((0, 0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array3, array};

    /// `[C=2, H=1, W=2]` with channels (3, −4) and (−5, 12) at the two pixels.
    fn chw() -> Array3<f32> {
        array![[[3.0f32, -5.0]], [[-4.0, 12.0]]]
    }

    #[test]
    fn reductions_by_hand() {
        let m = chw().into_dyn();
        let first = ChannelAxis::First;
        assert_eq!(
            reduce_channels(m.view(), first, Reduction::Sum),
            array![[-1.0, 7.0]]
        );
        assert_eq!(
            reduce_channels(m.view(), first, Reduction::AbsMax),
            array![[4.0, 12.0]]
        );
        assert_eq!(
            reduce_channels(m.view(), first, Reduction::L2),
            array![[5.0, 13.0]]
        );
    }

    #[test]
    fn channels_last_agrees() {
        let hwc = chw()
            .permuted_axes([1, 2, 0])
            .as_standard_layout()
            .to_owned();
        assert_eq!(hwc.shape(), &[1, 2, 2]);
        for &r in Reduction::ALL {
            assert_eq!(
                reduce_channels(hwc.view().into_dyn(), ChannelAxis::Last, r),
                reduce_channels(chw().view().into_dyn(), ChannelAxis::First, r),
                "{r}"
            );
        }
    }

    #[test]
    fn other_ranks_and_edge_cases() {
        let m2 = array![[1.0f32, -2.0]].into_dyn();
        for &r in Reduction::ALL {
            assert_eq!(
                reduce_channels(m2.view(), ChannelAxis::First, r),
                array![[1.0, -2.0]]
            );
        }
        let m1 = array![1.0f32, 2.0, 3.0].into_dyn();
        assert_eq!(
            reduce_channels(m1.view(), ChannelAxis::Last, Reduction::L2),
            array![[1.0, 2.0, 3.0]]
        );
        let none = Array3::<f32>::zeros((0, 2, 3)).into_dyn();
        for &r in Reduction::ALL {
            assert_eq!(
                reduce_channels(none.view(), ChannelAxis::First, r),
                Array2::zeros((2, 3))
            );
        }
        let nan = array![[[f32::NAN]], [[1.0]]].into_dyn();
        let got = reduce_channels(nan.view(), ChannelAxis::First, Reduction::AbsMax);
        assert!(got[[0, 0]].is_nan());
        assert_eq!("absmax".parse::<Reduction>(), Ok(Reduction::AbsMax));
    }
}
