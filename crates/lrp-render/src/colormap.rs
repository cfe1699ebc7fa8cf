//! Colormaps: matplotlib's `seismic`, `bwr`, `hot` and `gray`, Zennit's `coldnhot`, `wred` and
//! `wblue`, each a piecewise-linear curve per channel over t ∈ [0, 1].

use crate::names::named_enum;

/// A colormap from a position t ∈ [0, 1] to an RGB colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Colormap {
    /// matplotlib's `seismic`: dark blue, blue, white (at ½), red, dark red. The default.
    #[default]
    Seismic,
    /// matplotlib's `bwr`: blue, white (at ½), red.
    Bwr,
    /// Zennit's `coldnhot`: cyan, blue, black (at 128/255), red, yellow, white.
    Coldnhot,
    /// matplotlib's `hot`: black-red, red, yellow, white.
    Hot,
    /// matplotlib's `gray`: black to white.
    Gray,
    /// Zennit's `wred`: white to red.
    Wred,
    /// Zennit's `wblue`: white to blue.
    Wblue,
}

named_enum!(Colormap, "colormap", {
    Seismic => "seismic",
    Bwr => "bwr",
    Coldnhot => "coldnhot",
    Hot => "hot",
    Gray => "gray",
    Wred => "wred",
    Wblue => "wblue",
});

/// Control points `(t, value)` of one channel, t rising from 0 to 1.
type Knots = &'static [(f32, f32)];

/// The three channels of a colormap.
struct Curves {
    r: Knots,
    g: Knots,
    b: Knots,
}

// matplotlib's `seismic` colour list (0, 0, .3), (0, 0, 1), (1, 1, 1), (1, 0, 0), (.5, 0, 0) at
// 0, ¼, ½, ¾, 1.
const SEISMIC: Curves = Curves {
    r: &[(0.0, 0.0), (0.25, 0.0), (0.5, 1.0), (0.75, 1.0), (1.0, 0.5)],
    g: &[(0.0, 0.0), (0.25, 0.0), (0.5, 1.0), (0.75, 0.0), (1.0, 0.0)],
    b: &[(0.0, 0.3), (0.25, 1.0), (0.5, 1.0), (0.75, 0.0), (1.0, 0.0)],
};

// matplotlib's `bwr` colour list (0, 0, 1), (1, 1, 1), (1, 0, 0) at 0, ½, 1.
const BWR: Curves = Curves {
    r: &[(0.0, 0.0), (0.5, 1.0), (1.0, 1.0)],
    g: &[(0.0, 0.0), (0.5, 1.0), (1.0, 0.0)],
    b: &[(0.0, 1.0), (0.5, 1.0), (1.0, 0.0)],
};

// matplotlib's `hot` segment data.
const HOT: Curves = Curves {
    r: &[(0.0, 0.0416), (0.365079, 1.0), (1.0, 1.0)],
    g: &[(0.0, 0.0), (0.365079, 0.0), (0.746032, 1.0), (1.0, 1.0)],
    b: &[(0.0, 0.0), (0.746032, 0.0), (1.0, 1.0)],
};

const GRAY: Curves = Curves {
    r: &[(0.0, 0.0), (1.0, 1.0)],
    g: &[(0.0, 0.0), (1.0, 1.0)],
    b: &[(0.0, 0.0), (1.0, 1.0)],
};

// Zennit's `coldnhot` source `0ff,00f,80:000,f00,ff0,fff`: black pinned at index 0x80 of 255,
// the unpinned colours spread evenly between pinned ones at integer indices 0, 64, 128, 170, 212,
// 255.
const C1: f32 = 64.0 / 255.0;
const C2: f32 = 128.0 / 255.0;
const C3: f32 = 170.0 / 255.0;
const C4: f32 = 212.0 / 255.0;
const COLDNHOT: Curves = Curves {
    r: &[
        (0.0, 0.0),
        (C1, 0.0),
        (C2, 0.0),
        (C3, 1.0),
        (C4, 1.0),
        (1.0, 1.0),
    ],
    g: &[
        (0.0, 1.0),
        (C1, 0.0),
        (C2, 0.0),
        (C3, 0.0),
        (C4, 1.0),
        (1.0, 1.0),
    ],
    b: &[
        (0.0, 1.0),
        (C1, 1.0),
        (C2, 0.0),
        (C3, 0.0),
        (C4, 0.0),
        (1.0, 1.0),
    ],
};

// Zennit's `wred` (`fff,f00`) and `wblue` (`fff,00f`).
const WRED: Curves = Curves {
    r: &[(0.0, 1.0), (1.0, 1.0)],
    g: &[(0.0, 1.0), (1.0, 0.0)],
    b: &[(0.0, 1.0), (1.0, 0.0)],
};
const WBLUE: Curves = Curves {
    r: &[(0.0, 1.0), (1.0, 0.0)],
    g: &[(0.0, 1.0), (1.0, 0.0)],
    b: &[(0.0, 1.0), (1.0, 1.0)],
};

impl Colormap {
    /// Whether the map is diverging (two hues meeting at t = ½: `seismic`, `bwr`, `coldnhot`)
    /// rather than sequential (one ramp from t = 0: `hot`, `gray`, `wred`, `wblue`).
    pub fn is_diverging(self) -> bool {
        matches!(self, Colormap::Seismic | Colormap::Bwr | Colormap::Coldnhot)
    }

    /// The position of the map's zero: ½ for a diverging map, 0 for a sequential one. `rgb`
    /// draws NaN in this colour.
    pub fn zero(self) -> f32 {
        if self.is_diverging() { 0.5 } else { 0.0 }
    }

    /// The 8-bit RGB colour at `t` ∈ [0, 1]; `t` outside is clamped, NaN gets the colour at
    /// [`Colormap::zero`].
    pub fn rgb(self, t: f32) -> [u8; 3] {
        let t = if t.is_nan() {
            self.zero()
        } else {
            t.clamp(0.0, 1.0)
        };
        let c = self.curves();
        [
            to_byte(interp(c.r, t)),
            to_byte(interp(c.g, t)),
            to_byte(interp(c.b, t)),
        ]
    }

    fn curves(self) -> &'static Curves {
        match self {
            Colormap::Seismic => &SEISMIC,
            Colormap::Bwr => &BWR,
            Colormap::Coldnhot => &COLDNHOT,
            Colormap::Hot => &HOT,
            Colormap::Gray => &GRAY,
            Colormap::Wred => &WRED,
            Colormap::Wblue => &WBLUE,
        }
    }
}

/// The piecewise-linear value of `knots` at `t` ∈ [0, 1].
fn interp(knots: Knots, t: f32) -> f32 {
    for w in knots.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        if t <= x1 {
            let f = if x1 > x0 { (t - x0) / (x1 - x0) } else { 0.0 };
            return y0 + (y1 - y0) * f;
        }
    }
    knots.last().map_or(0.0, |k| k.1)
}

fn to_byte(v: f32) -> u8 {
    (v * 255.0).round().clamp(0.0, 255.0) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts `cmap.rgb(t)` is within ±1 per channel of each reference colour.
    fn check(cmap: Colormap, refs: &[(f32, [u8; 3])]) {
        for &(t, want) in refs {
            let got = cmap.rgb(t);
            for c in 0..3 {
                assert!(
                    (got[c] as i32 - want[c] as i32).abs() <= 1,
                    "{cmap} at {t}: got {got:?}, want {want:?}"
                );
            }
        }
    }

    // The matplotlib references come from matplotlib 3.11.2,
    // `round(255 * matplotlib.colormaps[name].resampled(65536)(t)[:3])`: the continuous map.
    // (matplotlib's default 256-entry table quantises t to 1/256 steps first and differs by up
    // to 2, e.g. seismic(0.5) = (255, 253, 253) there.)

    #[test]
    fn seismic_matches_matplotlib() {
        check(
            Colormap::Seismic,
            &[
                (0.0, [0, 0, 76]),
                (0.1, [0, 0, 148]),
                (0.25, [0, 0, 255]),
                (0.4, [153, 153, 255]),
                (0.5, [255, 255, 255]),
                (0.6, [255, 153, 153]),
                (0.75, [255, 0, 0]),
                (0.9, [178, 0, 0]),
                (1.0, [128, 0, 0]),
            ],
        );
    }

    #[test]
    fn bwr_matches_matplotlib() {
        check(
            Colormap::Bwr,
            &[
                (0.0, [0, 0, 255]),
                (0.1, [51, 51, 255]),
                (0.25, [128, 128, 255]),
                (0.4, [204, 204, 255]),
                (0.5, [255, 255, 255]),
                (0.6, [255, 204, 204]),
                (0.75, [255, 127, 127]),
                (0.9, [255, 51, 51]),
                (1.0, [255, 0, 0]),
            ],
        );
    }

    #[test]
    fn hot_matches_matplotlib() {
        check(
            Colormap::Hot,
            &[
                (0.0, [11, 0, 0]),
                (0.1, [78, 0, 0]),
                (0.25, [178, 0, 0]),
                (0.4, [255, 23, 0]),
                (0.5, [255, 90, 0]),
                (0.6, [255, 157, 0]),
                (0.75, [255, 255, 4]),
                (0.9, [255, 255, 155]),
                (1.0, [255, 255, 255]),
            ],
        );
    }

    #[test]
    fn gray_matches_matplotlib() {
        check(
            Colormap::Gray,
            &[
                (0.0, [0, 0, 0]),
                (0.1, [25, 25, 25]),
                (0.25, [64, 64, 64]),
                (0.4, [102, 102, 102]),
                (0.5, [128, 128, 128]),
                (0.6, [153, 153, 153]),
                (0.75, [191, 191, 191]),
                (0.9, [230, 230, 230]),
                (1.0, [255, 255, 255]),
            ],
        );
    }

    // The Zennit references come from zennit 0.5.1 (/opt/fixenv),
    // `round(255 * zennit.image.CMAPS[name](numpy.array(t)))`: the continuous map.

    #[test]
    fn coldnhot_matches_zennit() {
        check(
            Colormap::Coldnhot,
            &[
                (0.0, [0, 255, 255]),
                (0.1, [0, 153, 255]),
                (0.25, [0, 1, 255]),
                (0.4, [0, 0, 104]),
                (0.5, [0, 0, 2]),
                (0.6, [152, 0, 0]),
                (0.75, [255, 129, 0]),
                (0.9, [255, 255, 104]),
                (1.0, [255, 255, 255]),
            ],
        );
    }

    #[test]
    fn wred_matches_zennit() {
        check(
            Colormap::Wred,
            &[
                (0.0, [255, 255, 255]),
                (0.1, [255, 230, 230]),
                (0.25, [255, 191, 191]),
                (0.4, [255, 153, 153]),
                (0.5, [255, 128, 128]),
                (0.6, [255, 102, 102]),
                (0.75, [255, 64, 64]),
                (0.9, [255, 25, 25]),
                (1.0, [255, 0, 0]),
            ],
        );
    }

    #[test]
    fn wblue_matches_zennit() {
        check(
            Colormap::Wblue,
            &[
                (0.0, [255, 255, 255]),
                (0.1, [230, 230, 255]),
                (0.25, [191, 191, 255]),
                (0.4, [153, 153, 255]),
                (0.5, [128, 128, 255]),
                (0.6, [102, 102, 255]),
                (0.75, [64, 64, 255]),
                (0.9, [25, 25, 255]),
                (1.0, [0, 0, 255]),
            ],
        );
    }

    #[test]
    fn clamps_and_nan() {
        for &cmap in Colormap::ALL {
            assert_eq!(cmap.rgb(-3.0), cmap.rgb(0.0), "{cmap}");
            assert_eq!(cmap.rgb(7.0), cmap.rgb(1.0), "{cmap}");
            assert_eq!(cmap.rgb(f32::NEG_INFINITY), cmap.rgb(0.0), "{cmap}");
            assert_eq!(cmap.rgb(f32::NAN), cmap.rgb(cmap.zero()), "{cmap}");
        }
        assert_eq!(Colormap::Seismic.rgb(f32::NAN), [255, 255, 255]);
        assert_eq!(Colormap::Wred.rgb(f32::NAN), [255, 255, 255]);
        assert_eq!(Colormap::Hot.rgb(f32::NAN), Colormap::Hot.rgb(0.0));
    }

    #[test]
    fn names_round_trip() {
        for &cmap in Colormap::ALL {
            assert_eq!(cmap.name().parse::<Colormap>(), Ok(cmap));
            assert_eq!(cmap.to_string(), cmap.name());
        }
        assert_eq!("Seismic".parse::<Colormap>(), Ok(Colormap::Seismic));
        assert_eq!(Colormap::default(), Colormap::Seismic);
        let err = "viridis".parse::<Colormap>().unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown colormap `viridis` (expected one of: seismic, bwr, coldnhot, hot, gray, \
             wred, wblue)"
        );
    }
}
