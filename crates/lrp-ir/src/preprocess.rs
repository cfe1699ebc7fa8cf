//! Image preprocessing recorded in a graph: how 8-bit pixels become the input tensor.

use serde::{Deserialize, Serialize};

use crate::graph::{InputDef, Layout};

/// Channel order of colour inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(clippy::upper_case_acronyms)]
pub enum ChannelOrder {
    /// Red, green, blue.
    RGB,
    /// Blue, green, red (Caffe, `keras.applications` "caffe" mode).
    BGR,
}

/// How an image becomes a sample of the size `T` (`resize` if given, else the input's size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Fit {
    /// Resized to `T`, the aspect ratio not kept.
    #[default]
    Stretch,
    /// Scaled, keeping the aspect ratio, until it covers `T`, then centre-cropped to `T`
    /// (the usual ImageNet evaluation crop).
    Shorter,
    /// Centre-cropped to `T` at its own resolution (an image smaller than `T` is an error).
    Crop,
}

/// The resampling filter of resizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Filter {
    /// Bilinear (PIL's and Keras' default for resizing).
    #[default]
    Bilinear,
    /// Nearest neighbour.
    Nearest,
}

/// How an image file becomes one input sample: decode to 8-bit RGB (or grey for 1-channel
/// inputs); bring it to the size `T` = `resize` (height × width) if given, else the input's
/// size, as `fit` says (with `filter`); centre-crop `T` to the input size; order the channels;
/// then each value is `(pixel · scale − mean[c]) / std[c]`, with `mean` and `std` in the
/// model's channel order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// Channel order the model expects.
    pub order: ChannelOrder,
    /// Multiplies the 0–255 pixel value first.
    pub scale: f32,
    /// Subtracted after scaling: one value, or one per channel.
    pub mean: Vec<f32>,
    /// Divides after the mean is subtracted: one value, or one per channel.
    pub std: Vec<f32>,
    /// Resize to this height × width before centre-cropping to the input size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<[usize; 2]>,
    /// How the image is brought to the resize (or input) size.
    #[serde(default, skip_serializing_if = "is_default")]
    pub fit: Fit,
    /// The resampling filter.
    #[serde(default, skip_serializing_if = "is_default")]
    pub filter: Filter,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl Preprocess {
    /// `keras.applications` "caffe" mode: BGR, ImageNet mean subtracted, no scaling.
    pub fn caffe() -> Self {
        Preprocess {
            order: ChannelOrder::BGR,
            scale: 1.0,
            mean: vec![103.939, 116.779, 123.68],
            std: vec![1.0],
            resize: None,
            fit: Fit::Stretch,
            filter: Filter::Bilinear,
        }
    }

    /// `keras.applications` / torchvision "torch" mode: RGB / 255, ImageNet mean and std.
    pub fn torch() -> Self {
        Preprocess {
            order: ChannelOrder::RGB,
            scale: 1.0 / 255.0,
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
            resize: None,
            fit: Fit::Stretch,
            filter: Filter::Bilinear,
        }
    }

    /// `keras.applications` "tf" mode: RGB scaled to [−1, 1].
    pub fn tf() -> Self {
        Preprocess {
            order: ChannelOrder::RGB,
            scale: 1.0 / 127.5,
            mean: vec![1.0],
            std: vec![1.0],
            resize: None,
            fit: Fit::Stretch,
            filter: Filter::Bilinear,
        }
    }

    /// Raw 0–255 values in RGB order.
    pub fn none() -> Self {
        Preprocess {
            order: ChannelOrder::RGB,
            scale: 1.0,
            mean: vec![0.0],
            std: vec![1.0],
            resize: None,
            fit: Fit::Stretch,
            filter: Filter::Bilinear,
        }
    }

    /// Mean of channel `c` (a single value applies to every channel).
    pub fn mean_of(&self, c: usize) -> f32 {
        if self.mean.len() == 1 {
            self.mean[0]
        } else {
            self.mean[c]
        }
    }

    /// Standard deviation of channel `c` (a single value applies to every channel).
    pub fn std_of(&self, c: usize) -> f32 {
        if self.std.len() == 1 {
            self.std[0]
        } else {
            self.std[c]
        }
    }

    /// The input value of pixel value `p` (0–255) in model channel `c`:
    /// `(p · scale − mean[c]) / std[c]`.
    pub fn normalize(&self, p: f32, c: usize) -> f32 {
        (p * self.scale - self.mean_of(c)) / self.std_of(c)
    }

    /// The pixel value (0–255, not rounded) that [`normalize`](Self::normalize) maps to `v`.
    pub fn pixel(&self, v: f32, c: usize) -> f32 {
        (v * self.std_of(c) + self.mean_of(c)) / self.scale
    }

    /// Checks that this preprocessing fits `input`: an image layout with 1 or 3 channels, and
    /// `mean`/`std` with 1 value or one per channel, `std` nonzero.
    pub fn check_for(&self, input: &InputDef) -> Result<(), String> {
        let channels = image_dims(input)?.0;
        for (what, v) in [("mean", &self.mean), ("std", &self.std)] {
            if v.len() != 1 && v.len() != channels {
                return Err(format!(
                    "preprocess {what} has {} values; the input has {channels} channel(s)",
                    v.len()
                ));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(format!("preprocess {what} has a non-finite value"));
            }
        }
        if self.std.contains(&0.0) || !self.scale.is_finite() {
            return Err("preprocess std must be nonzero and scale finite".into());
        }
        if let Some([h, w]) = self.resize {
            let (_, ih, iw) = image_dims(input)?;
            if h < ih || w < iw {
                return Err(format!(
                    "preprocess resize {h}x{w} is smaller than the input's {ih}x{iw}"
                ));
            }
        }
        Ok(())
    }
}

/// Channels, height and width of an image input, from its layout.
pub fn image_dims(input: &InputDef) -> Result<(usize, usize, usize), String> {
    let (c, h, w) = match (input.layout, input.shape.as_slice()) {
        (Layout::NCHW, &[c, h, w]) => (c, h, w),
        (Layout::NHWC, &[h, w, c]) => (c, h, w),
        _ => {
            return Err(format!(
                "input '{}' (layout {:?}, per-sample shape {:?}) is not an image input",
                input.name, input.layout, input.shape
            ));
        }
    };
    if c != 1 && c != 3 {
        return Err(format!(
            "input '{}' has {c} channels; images need 1 (grey) or 3 (colour)",
            input.name
        ));
    }
    Ok((c, h, w))
}

impl std::str::FromStr for Preprocess {
    type Err = String;

    /// Parses an optional mode first (`caffe`, `torch`, `tf`, `none`), then `key=value` pairs,
    /// all separated by commas: `scale=S` (a number or a fraction such as `1/255`), `mean=M`
    /// and `std=D` (per-channel values separated by `/`), `order=RGB|BGR`, `resize=HxW`,
    /// `fit=stretch|shorter|crop`, `filter=bilinear|nearest`; keys not given keep the mode's
    /// values (`none` without a mode).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut p = Self::none();
        for (i, part) in s
            .split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .enumerate()
        {
            let mode = match part {
                "caffe" => Some(Self::caffe()),
                "torch" => Some(Self::torch()),
                "tf" => Some(Self::tf()),
                "none" => Some(Self::none()),
                _ => None,
            };
            if let Some(m) = mode {
                if i > 0 {
                    return Err(format!("the mode '{part}' must come first"));
                }
                p = m;
                continue;
            }
            let Some((k, v)) = part.split_once('=') else {
                return Err(format!(
                    "'{part}' is not key=value (expected caffe, torch, tf or none, then scale=S,mean=M,std=D,order=RGB|BGR,resize=HxW,fit=stretch|shorter|crop,filter=bilinear|nearest)"
                ));
            };
            let floats = |v: &str| -> Result<Vec<f32>, String> {
                v.split('/')
                    .map(|x| parse_num(x.trim()).map_err(|_| format!("{k}: '{x}' is not a number")))
                    .collect()
            };
            match k.trim() {
                "scale" => {
                    let bad = || format!("scale: '{v}' is not a number or a fraction a/b");
                    p.scale = match v.trim().split_once('/') {
                        Some((a, b)) => {
                            let (a, b) = (
                                parse_num(a.trim()).map_err(|_| bad())?,
                                parse_num(b.trim()).map_err(|_| bad())?,
                            );
                            ((a as f64) / (b as f64)) as f32
                        }
                        None => parse_num(v.trim()).map_err(|_| bad())?,
                    }
                }
                "mean" => p.mean = floats(v)?,
                "std" => p.std = floats(v)?,
                "order" => {
                    p.order = match v.trim().to_ascii_uppercase().as_str() {
                        "RGB" => ChannelOrder::RGB,
                        "BGR" => ChannelOrder::BGR,
                        _ => return Err(format!("order: '{v}' is not RGB or BGR")),
                    }
                }
                "resize" => {
                    let (h, w) = v
                        .trim()
                        .split_once(['x', 'X'])
                        .ok_or_else(|| format!("resize: '{v}' is not HxW"))?;
                    let parse = |x: &str| {
                        x.trim()
                            .parse::<usize>()
                            .map_err(|_| format!("resize: '{v}' is not HxW"))
                    };
                    p.resize = Some([parse(h)?, parse(w)?]);
                }
                "fit" => {
                    p.fit = match v.trim().to_ascii_lowercase().as_str() {
                        "stretch" => Fit::Stretch,
                        "shorter" => Fit::Shorter,
                        "crop" => Fit::Crop,
                        _ => return Err(format!("fit: '{v}' is not stretch, shorter or crop")),
                    }
                }
                "filter" => {
                    p.filter = match v.trim().to_ascii_lowercase().as_str() {
                        "bilinear" => Filter::Bilinear,
                        "nearest" => Filter::Nearest,
                        _ => return Err(format!("filter: '{v}' is not bilinear or nearest")),
                    }
                }
                other => {
                    return Err(format!(
                        "unknown preprocessing key '{other}' (scale, mean, std, order, resize, fit, filter)"
                    ));
                }
            }
        }
        Ok(p)
    }
}

/// Parses a plain decimal number (`/` separates channels, so fractions are not accepted).
fn parse_num(s: &str) -> Result<f32, std::num::ParseFloatError> {
    s.parse::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_and_back() {
        // caffe: BGR, mean per channel, scale 1, std 1.
        let p = Preprocess::caffe();
        assert_eq!(p.normalize(200.0, 2), 200.0 - 123.68);
        assert_eq!(p.pixel(200.0 - 123.68, 2), 200.0);
        // torch: (p/255 − 0.485)/0.229 for channel 0.
        let t = Preprocess::torch();
        let v = t.normalize(255.0, 0);
        assert!((v - (1.0 - 0.485) / 0.229).abs() < 1e-6);
        assert!((t.pixel(v, 0) - 255.0).abs() < 1e-3);
    }

    #[test]
    fn parse_modes_and_pairs() {
        assert_eq!("caffe".parse::<Preprocess>().unwrap(), Preprocess::caffe());
        let p: Preprocess = "scale=0.5,mean=0.485/0.456/0.406,std=0.2,order=bgr,resize=256x300"
            .parse()
            .unwrap();
        assert_eq!(p.scale, 0.5);
        assert_eq!(p.mean, vec![0.485, 0.456, 0.406]);
        assert_eq!(p.std, vec![0.2]);
        assert_eq!(p.order, ChannelOrder::BGR);
        assert_eq!(p.resize, Some([256, 300]));
        assert!(
            "scale=abc"
                .parse::<Preprocess>()
                .unwrap_err()
                .contains("scale")
        );
        assert_eq!(
            "scale=1/255".parse::<Preprocess>().unwrap().scale,
            1.0 / 255.0
        );
        assert!(
            "foo=1"
                .parse::<Preprocess>()
                .unwrap_err()
                .contains("unknown")
        );
        assert!("resize=12".parse::<Preprocess>().is_err());
    }
}
