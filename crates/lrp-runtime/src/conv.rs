//! Single-precision convolutions and their transposes on ONNX Runtime's CPU provider, for the
//! relevance pass.

use lrp_kernels::ConvGeometry;
use lrp_kernels::kernels::Sconv;
use lrp_onnx::attr_type;
use lrp_onnx::proto::{AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto};
use ndarray::{Array4, ArrayView4, ArrayViewMut4};

use crate::export::{Dim, f32_value_info};
use crate::session::RuntimeError;
use crate::small::OneNode;

/// The ONNX node a product runs as, with its attributes (the key of its session).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct NodeKey {
    op: &'static str,
    kernel: [usize; 2],
    strides: [usize; 2],
    pads: [usize; 4],
    dilations: [usize; 2],
    groups: usize,
    output_padding: [usize; 2],
}

/// [`Sconv`] on ONNX Runtime: the forward map runs as `Conv`. The transpose of a stride-1,
/// one-group convolution runs as `Conv` of the relevance with the flipped, transposed kernel
/// (ONNX Runtime's fastest path), unless the convolution has at most a quarter as many input
/// as output channels (a first layer); that one, and any other transpose, runs as
/// `ConvTranspose`. One session per node kind and attributes, with every dimension symbolic,
/// made on first use; weights travel as inputs, so one session serves every layer of that
/// geometry.
#[derive(Debug)]
pub struct OrtConv {
    sessions: OneNode<NodeKey>,
}

impl OrtConv {
    /// Convolutions on `threads` intra-op threads (None: ONNX Runtime's default).
    pub fn new(threads: Option<usize>) -> Result<Self, RuntimeError> {
        Ok(OrtConv {
            sessions: OneNode::new(threads)?,
        })
    }

    /// Runs `key` on `x` and `w` into `out`; an error when the result's shape is not `out`'s.
    fn run(
        &self,
        key: NodeKey,
        x: ArrayView4<f32>,
        w: ArrayView4<f32>,
        out: ArrayViewMut4<f32>,
    ) -> Result<(), ort::Error> {
        self.sessions.run(&key, node_model, x, w, out)
    }
}

impl Sconv for OrtConv {
    fn forward(
        &self,
        x: ArrayView4<f32>,
        w: ArrayView4<f32>,
        g: &ConvGeometry,
        out: ArrayViewMut4<f32>,
    ) -> bool {
        let key = NodeKey {
            op: "Conv",
            kernel: g.kernel(),
            strides: g.strides(),
            pads: g.pads(),
            dilations: g.dilations(),
            groups: g.groups(),
            output_padding: [0, 0],
        };
        // Any failure falls back to the kernels' own convolution.
        self.run(key, x, w, out).is_ok()
    }

    fn transpose(
        &self,
        s: ArrayView4<f32>,
        w: ArrayView4<f32>,
        g: &ConvGeometry,
        out: ArrayViewMut4<f32>,
    ) -> bool {
        // A convolution of the relevance unfolds `O·kh·kw` rows per pixel, a `ConvTranspose`
        // folds `C·kh·kw` back: with few input channels (a first layer) the fold moves far
        // less memory.
        let keys = if g.input_shape()[0] * 4 <= g.output_shape()[0] {
            [conv_transpose(g), flipped_conv(g)]
        } else {
            [flipped_conv(g), conv_transpose(g)]
        };
        let Some(key) = keys.into_iter().flatten().next() else {
            return false;
        };
        let result = if key.op == "ConvTranspose" {
            self.run(key, s, w, out)
        } else {
            self.run(key, s, flip_kernel(w).view(), out)
        };
        result.is_ok()
    }
}

/// The transpose of a stride-1, one-group convolution as a convolution: the input gradient is
/// the relevance convolved with the kernel flipped in space and with its channel axes swapped,
/// padded by `d·(k − 1) − pad` on each side (None when a pad exceeds `d·(k − 1)`).
fn flipped_conv(g: &ConvGeometry) -> Option<NodeKey> {
    let ([kh, kw], [dh, dw], p) = (g.kernel(), g.dilations(), g.pads());
    if g.strides() != [1, 1] || g.groups() != 1 {
        return None;
    }
    let (eh, ew) = (dh * (kh - 1), dw * (kw - 1));
    Some(NodeKey {
        op: "Conv",
        kernel: [kh, kw],
        strides: [1, 1],
        pads: [
            eh.checked_sub(p[0])?,
            ew.checked_sub(p[1])?,
            eh.checked_sub(p[2])?,
            ew.checked_sub(p[3])?,
        ],
        dilations: [dh, dw],
        groups: 1,
        output_padding: [0, 0],
    })
}

/// The transpose as ONNX `ConvTranspose` (whose weight layout `[C_in, C_out/groups, kh, kw]` is
/// the convolution's own), with the output padding that restores the input's size (rows and
/// columns the forward map never read get none).
fn conv_transpose(g: &ConvGeometry) -> Option<NodeKey> {
    let ([_, h, w], [_, oh, ow]) = (g.input_shape(), g.output_shape());
    let ([kh, kw], [sh, sw], [dh, dw], p) = (g.kernel(), g.strides(), g.dilations(), g.pads());
    if oh == 0 || ow == 0 {
        return None;
    }
    // ConvTranspose's size: s·(o − 1) + d·(k − 1) + 1 − pad_begin − pad_end + output_padding.
    let extra = |size: usize, o: usize, s: usize, d: usize, k: usize, pb: usize, pe: usize| {
        (size + pb + pe).checked_sub(s * (o - 1) + d * (k - 1) + 1)
    };
    let eh = extra(h, oh, sh, dh, kh, p[0], p[2])?;
    let ew = extra(w, ow, sw, dw, kw, p[1], p[3])?;
    // ONNX Runtime takes an output padding below the stride or the dilation.
    if eh >= sh.max(dh) || ew >= sw.max(dw) {
        return None;
    }
    Some(NodeKey {
        op: "ConvTranspose",
        kernel: [kh, kw],
        strides: [sh, sw],
        pads: p,
        dilations: [dh, dw],
        groups: g.groups(),
        output_padding: [eh, ew],
    })
}

/// `w'[c, o, a, b] = w[o, c, kh − 1 − a, kw − 1 − b]`: each `kh × kw` block reversed, built in
/// parallel.
fn flip_kernel(w: ArrayView4<f32>) -> Array4<f32> {
    let (o, c, kh, kw) = w.dim();
    let k = kh * kw;
    let w = w.as_standard_layout();
    let ws = w.as_slice().expect("standard layout");
    // Row `ci` of the result holds blocks (oi, ci) of `w` for every `oi`, each reversed.
    let out = lrp_kernels::kernels::par_rows_with(c, o * k, |ci, span, dst| {
        let mut p = span.start;
        while p < span.end {
            let (oi, j) = (p / k, p % k);
            let end = ((oi + 1) * k).min(span.end);
            let block = &ws[(oi * c + ci) * k..][..k];
            // Positions j..j + (end − p) of the reversed block.
            dst.extend(block[k - (j + end - p)..k - j].iter().rev().copied());
            p = end;
        }
    });
    Array4::from_shape_vec((c, o, kh, kw), out).expect("c·o·kh·kw values")
}

fn ints(name: &str, v: &[usize]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attr_type::INTS),
        ints: v.iter().map(|&x| x as i64).collect(),
        ..Default::default()
    }
}

fn node_model(key: &NodeKey) -> ModelProto {
    let mut attribute = vec![
        ints("kernel_shape", &key.kernel),
        ints("strides", &key.strides),
        ints("pads", &key.pads),
        ints("dilations", &key.dilations),
        AttributeProto {
            name: Some("group".into()),
            r#type: Some(attr_type::INT),
            i: Some(key.groups as i64),
            ..Default::default()
        },
    ];
    if key.op == "ConvTranspose" {
        attribute.push(ints("output_padding", &key.output_padding));
    }
    let four = |name: &str, dims: [&'static str; 4]| f32_value_info(name, &dims.map(Dim::Symbolic));
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        producer_name: Some("lrp-graph".into()),
        graph: Some(GraphProto {
            name: Some("conv".into()),
            node: vec![NodeProto {
                name: Some("conv".into()),
                op_type: Some(key.op.into()),
                input: vec!["A".into(), "B".into()],
                output: vec!["Y".into()],
                attribute,
                ..Default::default()
            }],
            input: vec![
                four("A", ["n", "c", "h", "w"]),
                four("B", ["k0", "k1", "kh", "kw"]),
            ],
            output: vec![four("Y", ["n", "o", "oh", "ow"])],
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flipped_kernels_match_the_definition() {
        // A non-square kernel, and rows (o·kh·kw values) longer than one parallel piece, so
        // that pieces start inside a block.
        for (o, c, kh, kw) in [(3, 2, 2, 3), (7300, 2, 3, 3)] {
            let w = Array4::from_shape_fn((o, c, kh, kw), |(a, b, y, x)| {
                (((a * 31 + b) * 7 + y) * 5 + x) as f32
            });
            let want = Array4::from_shape_fn((c, o, kh, kw), |(ci, oi, a, b)| {
                w[[oi, ci, kh - 1 - a, kw - 1 - b]]
            });
            assert_eq!(flip_kernel(w.view()), want, "{o}x{c}x{kh}x{kw}");
        }
    }
}
