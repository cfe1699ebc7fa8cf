//! Heatmaps of relevance maps, as the SGLRP paper draws them: the map summed over channels,
//! scaled symmetrically to ±max|h| (1 where the map is all 0) and drawn with matplotlib's
//! `seismic` colormap (blue negative, white 0, red positive).

use ndarray::{Array2, ArrayViewD, Axis};

/// Where the channel axis of a per-sample map is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelAxis {
    /// `[C, H, W]`.
    First,
    /// `[H, W, C]`.
    Last,
}

/// Sums a per-sample map over its channel axis: `[C, H, W]` or `[H, W, C]` → `[H, W]`. A
/// 2-D map is returned as it is; a 1-D map becomes one row.
pub fn channel_sum(map: ArrayViewD<'_, f32>, channels: ChannelAxis) -> Array2<f32> {
    match map.ndim() {
        3 => {
            let axis = if channels == ChannelAxis::First { 0 } else { 2 };
            map.sum_axis(Axis(axis)).into_dimensionality().expect("2-D")
        }
        2 => map.to_owned().into_dimensionality().expect("2-D"),
        _ => {
            let flat: Vec<f32> = map.iter().copied().collect();
            Array2::from_shape_vec((1, flat.len()), flat).expect("one row")
        }
    }
}

/// matplotlib's `seismic`: dark blue, blue, white, red, dark red at 0, ¼, ½, ¾, 1.
const SEISMIC: [[f32; 3]; 5] = [
    [0.0, 0.0, 0.3],
    [0.0, 0.0, 1.0],
    [1.0, 1.0, 1.0],
    [1.0, 0.0, 0.0],
    [0.5, 0.0, 0.0],
];

/// The `seismic` colour at `t ∈ [0, 1]` (clamped), as 8-bit RGB.
pub fn seismic(t: f32) -> [u8; 3] {
    let t = if t.is_nan() { 0.5 } else { t.clamp(0.0, 1.0) };
    let x = t * 4.0;
    let i = (x.floor() as usize).min(3);
    let f = x - i as f32;
    let (a, b) = (SEISMIC[i], SEISMIC[i + 1]);
    let mut out = [0u8; 3];
    for c in 0..3 {
        out[c] = ((a[c] + (b[c] - a[c]) * f) * 255.0).round() as u8;
    }
    out
}

/// RGB pixels (row-major, 3 bytes each) of a `[H, W]` heatmap scaled to ±max|h|.
pub fn heatmap_rgb(h: &Array2<f32>) -> Vec<u8> {
    let m = h.iter().fold(0f32, |m, &v| m.max(v.abs()));
    let m = if m > 0.0 { m } else { 1.0 };
    h.iter()
        .flat_map(|&v| seismic((v / m + 1.0) / 2.0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn seismic_reference_colours() {
        // matplotlib: seismic(0) = (0, 0, 0.3), seismic(0.5) ≈ white, seismic(1) = (0.5, 0, 0).
        assert_eq!(seismic(0.0), [0, 0, 77]);
        assert_eq!(seismic(0.25), [0, 0, 255]);
        assert_eq!(seismic(0.5), [255, 255, 255]);
        assert_eq!(seismic(0.75), [255, 0, 0]);
        assert_eq!(seismic(1.0), [128, 0, 0]);
        assert_eq!(seismic(0.625), [255, 128, 128]);
    }

    #[test]
    fn symmetric_scaling() {
        let h = array![[-2.0f32, 0.0], [1.0, 2.0]];
        let px = heatmap_rgb(&h);
        assert_eq!(&px[0..3], &[0, 0, 77]);
        assert_eq!(&px[3..6], &[255, 255, 255]);
        assert_eq!(&px[9..12], &[128, 0, 0]);
        // All zero: white, no division by zero.
        assert_eq!(heatmap_rgb(&Array2::zeros((1, 1))), vec![255, 255, 255]);
    }

    #[test]
    fn channel_sums() {
        let m =
            ndarray::Array3::from_shape_fn((2, 1, 2), |(c, _, w)| (c * 10 + w) as f32).into_dyn();
        assert_eq!(
            channel_sum(m.view(), ChannelAxis::First),
            array![[10.0, 12.0]]
        );
        assert_eq!(
            channel_sum(m.view(), ChannelAxis::Last),
            array![[1.0], [21.0]]
        );
    }
}

/// Enlarges RGB pixels (`w × h`, 3 bytes each) by an integer factor with nearest-neighbour
/// sampling, so small maps stay crisp; returns the pixels and the new size.
pub fn zoom_rgb(px: &[u8], w: usize, h: usize, factor: usize) -> (Vec<u8>, usize, usize) {
    let f = factor.max(1);
    let (zw, zh) = (w * f, h * f);
    let mut out = Vec::with_capacity(zw * zh * 3);
    for y in 0..zh {
        for x in 0..zw {
            let k = ((y / f) * w + x / f) * 3;
            out.extend_from_slice(&px[k..k + 3]);
        }
    }
    (out, zw, zh)
}

/// The zoom factor that makes the shorter side of an `h × w` map at least 112 pixels.
pub fn auto_zoom(h: usize, w: usize) -> usize {
    112usize.div_ceil(h.min(w).max(1)).max(1)
}

#[cfg(test)]
mod zoom_tests {
    use super::*;

    #[test]
    fn nearest_zoom() {
        let px = [1, 2, 3, 4, 5, 6];
        let (z, w, h) = zoom_rgb(&px, 2, 1, 2);
        assert_eq!((w, h), (4, 2));
        assert_eq!(
            z,
            [
                1, 2, 3, 1, 2, 3, 4, 5, 6, 4, 5, 6, 1, 2, 3, 1, 2, 3, 4, 5, 6, 4, 5, 6
            ]
        );
        assert_eq!(auto_zoom(28, 56), 4);
        assert_eq!(auto_zoom(224, 224), 1);
    }
}
