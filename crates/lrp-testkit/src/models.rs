//! Architecture-faithful torchvision VGG16 and ResNet-18 with seeded random weights.
//!
//! Both take input `"input"` of shape `[N, 3, H, W]` (symbolic batch `N`) and produce
//! `"logits"` of shape `[N, num_classes]`, at opset [`MODEL_OPSET`]. Nodes and weights carry
//! torchvision's module names (`features.0.weight`, `layer1.0.bn1.running_var`, …).

use lrp_onnx::ModelProto;

use crate::builder::{OnnxBuilder, ParamCount};

/// The opset of [`vgg16`] and [`resnet18`].
pub const MODEL_OPSET: i64 = 17;
/// The input name of [`vgg16`] and [`resnet18`].
pub const MODEL_INPUT: &str = "input";
/// The output name of [`vgg16`] and [`resnet18`].
pub const MODEL_OUTPUT: &str = "logits";

/// Gamma scale of the last BatchNorm of each ResNet residual branch (`bn2`) and of the
/// projection shortcut's BatchNorm (`downsample.1`): without it every block roughly doubles the
/// activations' second moment (two summands of similar size), with it the growth over 8 blocks
/// stays small.
pub const RESNET_BRANCH_GAMMA: f32 = 0.5;

fn scaled(channels: usize, width_div: usize) -> usize {
    (channels / width_div.max(1)).max(1)
}

/// torchvision VGG16's convolution widths, `0` marking a 2x2/2 max pool (config "D").
const VGG16_CFG: [usize; 18] = [
    64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0,
];

/// Configuration of [`vgg16`]-style models; [`VggConfig::new`] gives torchvision's widths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VggConfig {
    /// Number of output classes.
    pub num_classes: usize,
    /// Input height and width (at least 32; 224 for the real model).
    pub image_hw: usize,
    /// Weight seed.
    pub seed: u64,
    /// Divisor of every convolution's channel count (1 = real widths; at least 1 channel).
    pub width_div: usize,
    /// Width of the two hidden classifier layers (4096 in torchvision).
    pub classifier_width: usize,
}

impl VggConfig {
    /// torchvision VGG16: real widths, classifier width 4096.
    pub fn new(num_classes: usize, image_hw: usize, seed: u64) -> Self {
        Self {
            num_classes,
            image_hw,
            seed,
            width_div: 1,
            classifier_width: 4096,
        }
    }

    /// Sets [`width_div`](Self::width_div).
    pub fn width_div(mut self, width_div: usize) -> Self {
        self.width_div = width_div;
        self
    }

    /// Sets [`classifier_width`](Self::classifier_width).
    pub fn classifier_width(mut self, classifier_width: usize) -> Self {
        self.classifier_width = classifier_width;
        self
    }

    /// Side of the last feature map (after five 2x2/2 pools: `image_hw / 32`, floored at
    /// each pool); 7 at 224.
    pub fn feature_hw(&self) -> usize {
        (0..5).fold(self.image_hw, |hw, _| hw / 2)
    }

    /// Input size of the first classifier `Gemm` (25088 for the real model at 224).
    pub fn classifier_in(&self) -> usize {
        scaled(512, self.width_div) * self.feature_hw() * self.feature_hw()
    }

    /// The model with seeded random weights.
    pub fn build(&self) -> ModelProto {
        let mut b = OnnxBuilder::new("vgg16", MODEL_OPSET).with_seed(self.seed);
        self.define(&mut b);
        b.into_model()
    }

    /// Initializer counts, without generating weights.
    pub fn param_count(&self) -> ParamCount {
        let mut b = OnnxBuilder::dry_run("vgg16", MODEL_OPSET);
        self.define(&mut b);
        b.param_count()
    }

    fn define(&self, b: &mut OnnxBuilder) {
        assert!(
            self.image_hw >= 32,
            "vgg16: image_hw {} < 32 leaves no feature map after five pools",
            self.image_hw
        );
        let hw = Some(self.image_hw);
        b.input(MODEL_INPUT, &[None, Some(3), hw, hw]);
        let mut x = MODEL_INPUT.to_owned();
        let mut in_c = 3;
        let mut index = 0;
        for &width in &VGG16_CFG {
            if width == 0 {
                x = b.named(&format!("features.{index}")).maxpool(&x, 2, 2, 0);
                index += 1;
            } else {
                let out_c = scaled(width, self.width_div);
                x = b
                    .named(&format!("features.{index}"))
                    .conv(&x, in_c, out_c, 3, 1, 1, 1, true);
                x = b.named(&format!("features.{}", index + 1)).relu(&x);
                in_c = out_c;
                index += 2;
            }
        }
        // torchvision's AdaptiveAvgPool2d((7, 7)) is the identity at 224 and is left out.
        x = b.named("flatten").flatten(&x);
        let cw = self.classifier_width;
        // Dropout (classifier.2, classifier.5) is the identity at inference.
        x = b.named("classifier.0").gemm(&x, self.classifier_in(), cw);
        x = b.named("classifier.1").relu(&x);
        x = b.named("classifier.3").gemm(&x, cw, cw);
        x = b.named("classifier.4").relu(&x);
        x = b.named("classifier.6").gemm(&x, cw, self.num_classes);
        b.rename_value(&x, MODEL_OUTPUT);
        b.output_shaped(MODEL_OUTPUT, &[None, Some(self.num_classes)]);
    }
}

/// torchvision VGG16 (real widths, classifier width 4096) with seeded He-initialised weights.
/// At `image_hw` 224 and 1000 classes it has 138,357,544 parameters (553 MB of f32); use
/// [`VggConfig`] for narrower test versions and weight-free parameter counts.
pub fn vgg16(num_classes: usize, image_hw: usize, seed: u64) -> ModelProto {
    VggConfig::new(num_classes, image_hw, seed).build()
}

/// Configuration of [`resnet18`]-style models; [`ResNetConfig::new`] gives torchvision's widths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResNetConfig {
    /// Number of output classes.
    pub num_classes: usize,
    /// Input height and width (224 for the real model; any size works thanks to the global
    /// average pool).
    pub image_hw: usize,
    /// Weight seed.
    pub seed: u64,
    /// Divisor of every channel count (1 = real widths; at least 1 channel).
    pub width_div: usize,
    /// 18 (basic blocks, 2-2-2-2) or 50 (bottleneck blocks, 3-4-6-3).
    pub depth: usize,
}

impl ResNetConfig {
    /// torchvision ResNet-18 at real widths.
    pub fn new(num_classes: usize, image_hw: usize, seed: u64) -> Self {
        Self {
            num_classes,
            image_hw,
            seed,
            width_div: 1,
            depth: 18,
        }
    }

    /// torchvision ResNet-50 (v1.5: the stride on the 3×3 convolution) at real widths.
    pub fn resnet50(num_classes: usize, image_hw: usize, seed: u64) -> Self {
        Self {
            depth: 50,
            ..Self::new(num_classes, image_hw, seed)
        }
    }

    fn name(&self) -> &'static str {
        if self.depth == 50 {
            "resnet50"
        } else {
            "resnet18"
        }
    }

    /// Sets [`width_div`](Self::width_div).
    pub fn width_div(mut self, width_div: usize) -> Self {
        self.width_div = width_div;
        self
    }

    /// The model with seeded random weights.
    pub fn build(&self) -> ModelProto {
        let mut b = OnnxBuilder::new(self.name(), MODEL_OPSET).with_seed(self.seed);
        self.define(&mut b);
        b.into_model()
    }

    /// Initializer counts, without generating weights. `trainable` is torchvision's count
    /// (BatchNorm gamma and beta included); BatchNorm's running statistics are `buffers`.
    pub fn param_count(&self) -> ParamCount {
        let mut b = OnnxBuilder::dry_run(self.name(), MODEL_OPSET);
        self.define(&mut b);
        b.param_count()
    }

    fn define(&self, b: &mut OnnxBuilder) {
        assert!(
            self.image_hw > 0,
            "{}: image_hw must be positive",
            self.name()
        );
        assert!(
            matches!(self.depth, 18 | 50),
            "ResNet depth {} (18 or 50)",
            self.depth
        );
        let hw = Some(self.image_hw);
        b.input(MODEL_INPUT, &[None, Some(3), hw, hw]);
        let c = |channels| scaled(channels, self.width_div);

        let mut x = b
            .named("conv1")
            .conv(MODEL_INPUT, 3, c(64), 7, 2, 3, 1, false);
        x = b.named("bn1").batchnorm(&x, c(64));
        x = b.named("relu").relu(&x);
        x = b.named("maxpool").maxpool(&x, 3, 2, 1);

        let mut in_c = c(64);
        let blocks: [usize; 4] = if self.depth == 50 {
            [3, 4, 6, 3]
        } else {
            [2, 2, 2, 2]
        };
        for (stage, planes) in [64, 128, 256, 512].into_iter().enumerate() {
            let planes = c(planes);
            for block in 0..blocks[stage] {
                let stride = if stage > 0 && block == 0 { 2 } else { 1 };
                let p = format!("layer{}.{block}", stage + 1);
                if self.depth == 50 {
                    x = bottleneck(b, &p, &x, in_c, planes, stride);
                    in_c = planes * 4;
                } else {
                    x = basic_block(b, &p, &x, in_c, planes, stride);
                    in_c = planes;
                }
            }
        }

        x = b.named("avgpool").global_avg_pool(&x);
        x = b.named("flatten").flatten(&x);
        x = b.named("fc").gemm(&x, in_c, self.num_classes);
        b.rename_value(&x, MODEL_OUTPUT);
        b.output_shaped(MODEL_OUTPUT, &[None, Some(self.num_classes)]);
    }
}

/// torchvision's `BasicBlock`: conv3x3(stride)-BN-ReLU-conv3x3-BN, plus the identity or a
/// 1x1(stride) conv + BN projection when the shape changes, then ReLU.
fn basic_block(
    b: &mut OnnxBuilder,
    prefix: &str,
    x: &str,
    in_c: usize,
    planes: usize,
    stride: usize,
) -> String {
    let y = conv_bn(b, prefix, 1, x, in_c, planes, 3, stride, false);
    let y = b.named(&format!("{prefix}.relu")).relu(&y);
    let y = conv_bn(b, prefix, 2, &y, planes, planes, 3, 1, true);
    residual(b, prefix, x, &y, in_c, planes, stride, "relu_1")
}

/// `{prefix}.conv{i}` (k×k, padding k/2, no bias) then `{prefix}.bn{i}`; the last BN of a
/// residual branch (`last`) starts with a small scale, as torchvision's zero-init would.
#[allow(clippy::too_many_arguments)]
fn conv_bn(
    b: &mut OnnxBuilder,
    prefix: &str,
    i: usize,
    x: &str,
    in_c: usize,
    out_c: usize,
    k: usize,
    stride: usize,
    last: bool,
) -> String {
    let y = b
        .named(&format!("{prefix}.conv{i}"))
        .conv(x, in_c, out_c, k, stride, k / 2, 1, false);
    let bn = b.named(&format!("{prefix}.bn{i}"));
    if last {
        bn.batchnorm_scaled(&y, out_c, RESNET_BRANCH_GAMMA)
    } else {
        bn.batchnorm(&y, out_c)
    }
}

/// The end of a residual block: `relu(y + shortcut)`, the shortcut being `x` or, when the shape
/// changes, a 1x1(stride) conv + BN projection of it (`{prefix}.downsample.*`); the final ReLU is
/// `{prefix}.{relu}`.
#[allow(clippy::too_many_arguments)]
fn residual(
    b: &mut OnnxBuilder,
    prefix: &str,
    x: &str,
    y: &str,
    in_c: usize,
    out_c: usize,
    stride: usize,
    relu: &str,
) -> String {
    let identity = if stride != 1 || in_c != out_c {
        let s = b
            .named(&format!("{prefix}.downsample.0"))
            .conv(x, in_c, out_c, 1, stride, 0, 1, false);
        b.named(&format!("{prefix}.downsample.1"))
            .batchnorm_scaled(&s, out_c, RESNET_BRANCH_GAMMA)
    } else {
        x.to_owned()
    };
    let sum = b.named(&format!("{prefix}.add")).add(y, &identity);
    b.named(&format!("{prefix}.{relu}")).relu(&sum)
}

/// torchvision's `Bottleneck` (v1.5): conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(4×)-BN,
/// plus the identity or a 1x1(stride) conv + BN projection when the shape changes, then ReLU.
fn bottleneck(
    b: &mut OnnxBuilder,
    prefix: &str,
    x: &str,
    in_c: usize,
    planes: usize,
    stride: usize,
) -> String {
    let out_c = planes * 4;
    let y = conv_bn(b, prefix, 1, x, in_c, planes, 1, 1, false);
    let y = b.named(&format!("{prefix}.relu")).relu(&y);
    let y = conv_bn(b, prefix, 2, &y, planes, planes, 3, stride, false);
    let y = b.named(&format!("{prefix}.relu_1")).relu(&y);
    let y = conv_bn(b, prefix, 3, &y, planes, out_c, 1, 1, true);
    residual(b, prefix, x, &y, in_c, out_c, stride, "relu_2")
}

/// torchvision ResNet-18 (real widths) with seeded He-initialised weights and non-trivial
/// BatchNorm statistics. At 1000 classes it has 11,689,512 parameters in torchvision's count
/// (plus 9,600 BatchNorm running-statistics elements); see [`ResNetConfig`].
pub fn resnet18(num_classes: usize, image_hw: usize, seed: u64) -> ModelProto {
    ResNetConfig::new(num_classes, image_hw, seed).build()
}
