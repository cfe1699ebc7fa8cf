//! Single-precision convolutions and their transposes on ONNX Runtime's CPU provider, for the
//! relevance pass.

use std::sync::OnceLock;

use lrp_kernels::ConvGeometry;
use lrp_kernels::kernels::Sconv;
use lrp_onnx::attr_type;
use lrp_onnx::proto::{AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto};
use ndarray::{Array4, ArrayView4, ArrayViewMut4, Axis, Slice};
use ort::value::TensorRef;

use crate::export::{Dim, f32_value_info};
use crate::session::RuntimeError;
use crate::small::OneNode;

/// The domain of ONNX Runtime's blocked-layout (NCHWc) CPU kernels.
const NCHWC_DOMAIN: &str = "com.microsoft.nchwc";

/// Images per run of a blocked convolution: as many as keep its input and output within
/// this many bytes (at least one). ONNX Runtime reorders each run's input and output in
/// buffers of its own; small runs keep those small (and in cache) instead of two more copies of
/// a whole batch of relevance maps.
const NCHWC_RUN_BYTES: usize = 32 << 20;

/// How a convolution's operands are laid out for ONNX Runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Layout {
    /// Plain `Conv` / `ConvTranspose` on NCHW tensors, the kernel as given.
    Plain,
    /// ONNX Runtime's blocked-layout convolution: the input reordered into channel blocks
    /// (NCHWc), the kernel in blocks of input and output channels, the output reordered back.
    Blocked,
    /// The blocked convolution of an input with fewer channels than a block, read as it is
    /// (NCHW); the kernel in blocks of output channels, the output reordered back.
    Direct,
}

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
    layout: Layout,
    /// Output channels (the blocked layouts' final reorder needs them; 0 for `Plain`).
    out_channels: usize,
}

/// [`Sconv`] on ONNX Runtime: the forward map runs as `Conv`. The transpose of a stride-1,
/// one-group convolution runs as `Conv` of the relevance with the flipped, transposed kernel,
/// unless the convolution has at most a quarter as many input as output channels (a first
/// layer); that one, and any other transpose, runs as `ConvTranspose`.
///
/// Where the processor has ONNX Runtime's blocked-layout (NCHWc) kernels, a one-group `Conv`
/// with a kernel larger than 1×1 runs on them, as ONNX Runtime's own forward pass does
/// (`Layout::Blocked`, or `Layout::Direct` for inputs with fewer channels than a block): the
/// kernel is put into the blocked layout here on each call, and the batch runs in groups of
/// images that keep ONNX Runtime's reordered copies small (32 MB of input and output). Per
/// convolution that is 3–24 % faster than the plain `Conv` on 2 cores, and it scales with cores
/// as the forward pass does (docs/performance.md). If a blocked run fails, the plain `Conv`
/// takes the work.
///
/// One session per node kind and attributes, with every dimension symbolic, made on first use;
/// weights travel as inputs, so one session serves every layer of that geometry.
#[derive(Debug)]
pub struct OrtConv {
    sessions: OneNode<NodeKey>,
    threads: Option<usize>,
    /// The channel block of ONNX Runtime's blocked kernels on this processor (None: it has
    /// none), found on first use.
    block: OnceLock<Option<usize>>,
    /// Bytes of input and output per blocked run ([`NCHWC_RUN_BYTES`]).
    run_bytes: usize,
}

impl OrtConv {
    /// Convolutions on `threads` intra-op threads (None: ONNX Runtime's default).
    pub fn new(threads: Option<usize>) -> Result<Self, RuntimeError> {
        Ok(OrtConv {
            sessions: OneNode::new(threads)?,
            threads,
            block: OnceLock::new(),
            run_bytes: NCHWC_RUN_BYTES,
        })
    }

    /// The channel block of the blocked kernels, if the processor has them (16 with AVX-512,
    /// 8 with AVX2). ONNX Runtime does not report it: its reorder of a blocked tensor back to
    /// one channel accepts exactly one block of input, so the candidate it accepts is the size.
    fn block(&self) -> Option<usize> {
        *self.block.get_or_init(|| {
            [16usize, 8].into_iter().find(|&b| {
                let model = reorder_output_model(1);
                let Ok(mut session) = crate::small::open(&model, self.threads, true) else {
                    return false;
                };
                let x = ndarray::Array4::<f32>::zeros((1, b, 1, 1));
                let Ok(t) = TensorRef::from_array_view(&x) else {
                    return false;
                };
                session.run(vec![("A", t)]).is_ok()
            })
        })
    }

    /// The key of a one-group `Conv` (`plain`) on ONNX Runtime's blocked kernels, for an input
    /// of `channels` channels and an output of `out_channels`; None where they do not apply.
    fn blocked_key(
        &self,
        plain: &NodeKey,
        channels: usize,
        out_channels: usize,
    ) -> Option<NodeKey> {
        let b = self.block()?;
        // A 1×1 convolution is one matrix product on the plain layout already; the reorders
        // would only add to it (ResNet-50's relevance pass ran 9–12 % slower with them).
        if plain.op != "Conv" || plain.groups != 1 || out_channels == 0 || plain.kernel == [1, 1] {
            return None;
        }
        // The input reorder takes whole groups of 4 channels; an input narrower than a block
        // is read unreordered.
        let layout = if channels < b {
            Layout::Direct
        } else if channels.is_multiple_of(4) {
            Layout::Blocked
        } else {
            return None;
        };
        Some(NodeKey {
            layout,
            out_channels,
            ..plain.clone()
        })
    }

    /// `out = conv(x, w')` on the blocked kernels, where `w'` is `w`, or with `flip` the
    /// flipped, transposed `w` (the transpose's kernel), in groups of images; false if ONNX
    /// Runtime refused (then `out` holds anything).
    fn run_blocked(
        &self,
        key: &NodeKey,
        x: ArrayView4<f32>,
        w: ArrayView4<f32>,
        flip: bool,
        mut out: ArrayViewMut4<f32>,
    ) -> bool {
        let Some(b) = self.block() else {
            return false;
        };
        let kernel = blocked_kernel(w, flip, b, key.layout == Layout::Blocked);
        for part in self.runs(x.shape()[0], x.len() + out.len()) {
            let (xi, oi) = (
                x.slice_axis(Axis(0), part),
                out.slice_axis_mut(Axis(0), part),
            );
            if self.run(key.clone(), xi, kernel.view(), oi).is_err() {
                return false;
            }
        }
        true
    }

    /// The groups of images, in order, in which a batch of `n` runs on the blocked kernels when
    /// its input and output hold `values` values together: as many images per run as fit in
    /// `run_bytes`, at least one.
    fn runs(&self, n: usize, values: usize) -> impl Iterator<Item = Slice> {
        let per_image = values / n.max(1) * std::mem::size_of::<f32>();
        let step = (self.run_bytes / per_image.max(1)).clamp(1, n.max(1));
        (0..n)
            .step_by(step)
            .map(move |i| Slice::from(i..(i + step).min(n)))
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
        mut out: ArrayViewMut4<f32>,
    ) -> bool {
        let key = conv_key(g);
        if let Some(k) = self.blocked_key(&key, x.shape()[1], out.shape()[1])
            && self.run_blocked(&k, x, w, false, out.view_mut())
        {
            return true;
        }
        // Any failure falls back to the kernels' own convolution.
        self.run(key, x, w, out).is_ok()
    }

    fn transpose(
        &self,
        s: ArrayView4<f32>,
        w: ArrayView4<f32>,
        g: &ConvGeometry,
        mut out: ArrayViewMut4<f32>,
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
        if key.op == "Conv"
            && let Some(k) = self.blocked_key(&key, s.shape()[1], out.shape()[1])
            && self.run_blocked(&k, s, w, true, out.view_mut())
        {
            return true;
        }
        let result = if key.op == "ConvTranspose" {
            self.run(key, s, w, out)
        } else {
            self.run(key, s, flip_kernel(w).view(), out)
        };
        result.is_ok()
    }

    /// On the blocked kernels only: their first node (the input's reorder, or the blocked
    /// convolution reading an unreordered input) reads a run's whole input before the last
    /// node (the output's reorder) writes the result, so input and output may be the same
    /// images. A plain `Conv` reads and writes as it goes, so it is never run in place.
    fn transpose_in_place(
        &self,
        mut s: ArrayViewMut4<f32>,
        w: ArrayView4<f32>,
        g: &ConvGeometry,
    ) -> bool {
        let channels = s.shape()[1];
        let Some(key) = flipped_conv(g).and_then(|k| self.blocked_key(&k, channels, channels))
        else {
            return false;
        };
        let Some(b) = self.block() else {
            return false;
        };
        if !s.is_standard_layout() || g.input_shape() != g.output_shape() {
            return false;
        }
        let kernel = blocked_kernel(w, true, b, key.layout == Layout::Blocked);
        for (i, part) in self.runs(s.shape()[0], 2 * s.len()).enumerate() {
            let mut si = s.slice_axis_mut(Axis(0), part);
            // SAFETY: the view covers the same live, standard-layout images as `si`, which is
            // not touched from Rust while ONNX Runtime runs; ONNX Runtime reads them all
            // before it writes any (above).
            let input = unsafe { ArrayView4::from_shape_ptr(si.raw_dim(), si.as_ptr()) };
            if let Err(e) = self.run(key.clone(), input, kernel.view(), si.view_mut()) {
                // A refused run writes nothing (the output's reorder writes last, after its
                // shape check): on the first, the caller transposes out of place instead. Later
                // images are already overwritten, so a failure there cannot fall back.
                if i == 0 {
                    return false;
                }
                panic!(
                    "ONNX Runtime failed part-way through a convolution transposed in place: {e}"
                );
            }
        }
        true
    }
}

/// The kernel of a blocked convolution in ONNX Runtime's layouts, zero-padded to whole blocks
/// of `b` channels. The kernel `k` is `w` (`[O, C, kh, kw]`), or with `flip` the transpose's
/// kernel, `k[o, c, y, x] = w[c, o, kh − 1 − y, kw − 1 − x]`. With `blocked_input` the layout is
/// `[O/b][C/b][kh][kw][b (input)][b (output)]` and the shape `[O', C', kh, kw]` (both counts
/// rounded up to blocks); otherwise `[O/b][C][kh][kw][b (output)]`, shape `[O', C, kh, kw]`.
fn blocked_kernel(w: ArrayView4<f32>, flip: bool, b: usize, blocked_input: bool) -> Array4<f32> {
    let (wo, wc, kh, kw) = w.dim();
    let w = w.as_standard_layout();
    let ws = w.as_slice().expect("standard layout");
    let (o, c) = if flip { (wc, wo) } else { (wo, wc) };
    let k = kh * kw;
    // k[o, c, y, x] as a position in `ws`, for o < O and c < C.
    let at = |oi: usize, ci: usize, y: usize, x: usize| {
        if flip {
            ((ci * wc + oi) * kh + (kh - 1 - y)) * kw + (kw - 1 - x)
        } else {
            ((oi * wc + ci) * kh + y) * kw + x
        }
    };
    let value = |oi: usize, ci: usize, y: usize, x: usize| {
        if oi < o && ci < c {
            ws[at(oi, ci, y, x)]
        } else {
            0.0
        }
    };
    // Input channels per block: `b`, or 1 when the input is read unblocked.
    let bi = if blocked_input { b } else { 1 };
    let (ob, cb) = (o.div_ceil(b), c.div_ceil(bi));
    // One row per (output block, input block): kh·kw blocks of bi × b, each a run of b output
    // channels for one input channel.
    let data = lrp_kernels::kernels::par_rows_with(ob * cb, k * bi * b, |row, span, dst| {
        let (o0, c0) = (row / cb * b, row % cb * bi);
        for run in span.start / b..span.end.div_ceil(b) {
            let (yx, ci) = (run / bi, c0 + run % bi);
            let (y, x) = (yx / kw, yx % kw);
            // The part of this run inside the piece.
            let lo = span.start.saturating_sub(run * b);
            let hi = (span.end - run * b).min(b);
            dst.extend((lo..hi).map(|j| value(o0 + j, ci, y, x)));
        }
    });
    Array4::from_shape_vec((ob * b, cb * bi, kh, kw), data).expect("whole blocks")
}

/// The forward map as a plain `Conv`.
fn conv_key(g: &ConvGeometry) -> NodeKey {
    NodeKey {
        op: "Conv",
        kernel: g.kernel(),
        strides: g.strides(),
        pads: g.pads(),
        dilations: g.dilations(),
        groups: g.groups(),
        output_padding: [0, 0],
        layout: Layout::Plain,
        out_channels: 0,
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
        layout: Layout::Plain,
        out_channels: 0,
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
        layout: Layout::Plain,
        out_channels: 0,
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

fn node(name: &str, op: &str, domain: &str, input: &[&str], output: &str) -> NodeProto {
    NodeProto {
        name: Some(name.into()),
        op_type: Some(op.into()),
        domain: (!domain.is_empty()).then(|| domain.into()),
        input: input.iter().map(|&i| i.into()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

fn int(name: &str, v: usize) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attr_type::INT),
        i: Some(v as i64),
        ..Default::default()
    }
}

fn four(name: &str, dims: [&'static str; 4]) -> lrp_onnx::proto::ValueInfoProto {
    f32_value_info(name, &dims.map(Dim::Symbolic))
}

/// A model of `nodes` from inputs `inputs` to `Y`, with the blocked kernels' domain imported
/// where `blocked`.
fn model(
    nodes: Vec<NodeProto>,
    inputs: Vec<lrp_onnx::proto::ValueInfoProto>,
    blocked: bool,
) -> ModelProto {
    let mut opset_import = vec![OperatorSetIdProto {
        domain: Some(String::new()),
        version: Some(17),
    }];
    if blocked {
        opset_import.push(OperatorSetIdProto {
            domain: Some(NCHWC_DOMAIN.into()),
            version: Some(1),
        });
    }
    ModelProto {
        ir_version: Some(8),
        opset_import,
        producer_name: Some("lrp-graph".into()),
        graph: Some(GraphProto {
            name: Some("conv".into()),
            node: nodes,
            input: inputs,
            output: vec![four("Y", ["n", "o", "oh", "ow"])],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `Y = op(A, B)`: the key's convolution; in the blocked layouts A is reordered into channel
/// blocks first (`Layout::Blocked`), and the blocked result back to `out_channels` channels.
fn node_model(key: &NodeKey) -> ModelProto {
    let mut attribute = vec![
        ints("kernel_shape", &key.kernel),
        ints("strides", &key.strides),
        ints("pads", &key.pads),
        ints("dilations", &key.dilations),
        int("group", key.groups),
    ];
    if key.op == "ConvTranspose" {
        attribute.push(ints("output_padding", &key.output_padding));
    }
    let inputs = vec![
        four("A", ["n", "c", "h", "w"]),
        four("B", ["k0", "k1", "kh", "kw"]),
    ];
    let nodes = match key.layout {
        Layout::Plain => vec![NodeProto {
            attribute,
            ..node("conv", key.op, "", &["A", "B"], "Y")
        }],
        Layout::Blocked | Layout::Direct => {
            let mut nodes = Vec::new();
            let mut x = "A";
            if key.layout == Layout::Blocked {
                nodes.push(node(
                    "reorder_in",
                    "ReorderInput",
                    NCHWC_DOMAIN,
                    &["A"],
                    "Ab",
                ));
                x = "Ab";
            }
            nodes.push(NodeProto {
                attribute,
                ..node("conv", "Conv", NCHWC_DOMAIN, &[x, "B"], "Yb")
            });
            nodes.push(NodeProto {
                attribute: vec![int("channels", key.out_channels)],
                ..node("reorder_out", "ReorderOutput", NCHWC_DOMAIN, &["Yb"], "Y")
            });
            nodes
        }
    };
    model(nodes, inputs, key.layout != Layout::Plain)
}

/// `Y = ReorderOutput(A)` to `channels` channels: the probe of [`OrtConv::block`].
fn reorder_output_model(channels: usize) -> ModelProto {
    model(
        vec![NodeProto {
            attribute: vec![int("channels", channels)],
            ..node("reorder_out", "ReorderOutput", NCHWC_DOMAIN, &["A"], "Y")
        }],
        vec![four("A", ["n", "c", "h", "w"])],
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_kernels_match_the_layouts() {
        // Channel counts that are no multiple of the block, a non-square kernel; and a kernel
        // whose blocked rows (17·17·16·16 values) are longer than one parallel piece.
        for (o, c, kh, kw, b, flip) in [
            (5usize, 11usize, 2usize, 3usize, 4usize, false),
            (5, 11, 2, 3, 4, true),
            (3, 2, 17, 17, 16, false),
            (3, 2, 17, 17, 16, true),
        ] {
            let w = Array4::from_shape_fn((o, c, kh, kw), |(a, i, y, x)| {
                (((a * 31 + i) * 7 + y) * 5 + x) as f32 + 1.0
            });
            // The convolution's own kernel k[o', c', y, x].
            let (ko, kc) = if flip { (c, o) } else { (o, c) };
            let k = |oi: usize, ci: usize, y: usize, x: usize| {
                if oi >= ko || ci >= kc {
                    0.0
                } else if flip {
                    w[[ci, oi, kh - 1 - y, kw - 1 - x]]
                } else {
                    w[[oi, ci, y, x]]
                }
            };
            let (ob, cb) = (ko.div_ceil(b), kc.div_ceil(b));
            let got = blocked_kernel(w.view(), flip, b, true);
            assert_eq!(got.dim(), (ob * b, cb * b, kh, kw));
            let flat = got.as_slice().unwrap();
            let mut p = 0;
            for o0 in 0..ob {
                for c0 in 0..cb {
                    for y in 0..kh {
                        for x in 0..kw {
                            for bi in 0..b {
                                for bo in 0..b {
                                    assert_eq!(flat[p], k(o0 * b + bo, c0 * b + bi, y, x));
                                    p += 1;
                                }
                            }
                        }
                    }
                }
            }
            let got = blocked_kernel(w.view(), flip, b, false);
            assert_eq!(got.dim(), (ob * b, kc, kh, kw));
            let flat = got.as_slice().unwrap();
            let mut p = 0;
            for o0 in 0..ob {
                for ci in 0..kc {
                    for y in 0..kh {
                        for x in 0..kw {
                            for bo in 0..b {
                                assert_eq!(flat[p], k(o0 * b + bo, ci, y, x));
                                p += 1;
                            }
                        }
                    }
                }
            }
        }
    }

    /// A seeded `[a, b, c, d]` tensor.
    fn random(shape: (usize, usize, usize, usize), seed: u64) -> Array4<f32> {
        let len = shape.0 * shape.1 * shape.2 * shape.3;
        Array4::from_shape_vec(shape, lrp_testkit::random_normal(seed, len, 1.0)).unwrap()
    }

    /// A 3×3 convolution, stride 1, padding 1 (the size kept), `c` → `o` channels on `h × w`.
    fn same_size(c: usize, h: usize, w: usize, o: usize) -> ConvGeometry {
        let op = lrp_ir::Op::Conv {
            kernel: [3, 3],
            strides: [1, 1],
            pads: [1, 1, 1, 1],
            dilations: [1, 1],
            groups: 1,
        };
        ConvGeometry::new(&op, &[c, h, w], &[o, c, 3, 3]).unwrap()
    }

    /// `got` equals `want` to f32 rounding, relative to `want`'s largest value.
    fn assert_close(got: &Array4<f32>, want: &Array4<f32>) {
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= 1e-5 * scale, "{err} against {scale}");
    }

    #[test]
    fn blocked_runs_in_groups_of_images_match_one_run() {
        let conv = OrtConv::new(Some(2)).unwrap();
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            assert!(conv.block().is_some(), "this processor has blocked kernels");
        }
        if conv.block().is_none() {
            return;
        }
        let (n, c, h, wd, o) = (5usize, 32usize, 9usize, 8usize, 24usize);
        let x = random((n, c, h, wd), 1);
        let w = random((o, c, 3, 3), 2);
        let g = same_size(c, h, wd, o);
        let plain = conv_key(&g);
        // Two images per run (the last run has one) against one run of all five.
        let small = OrtConv {
            run_bytes: 2 * (c + o) * h * wd * 4,
            ..OrtConv::new(Some(2)).unwrap()
        };
        // The forward map (32 → 24 channels) and the transpose's flipped kernel (24 → 32).
        let s = random((n, o, h, wd), 3);
        for (input, flip, want) in [
            (
                &x,
                false,
                lrp_kernels::kernels::conv2d_forward(x.view(), w.view(), &g),
            ),
            (
                &s,
                true,
                lrp_kernels::kernels::conv2d_transpose(s.view(), w.view(), &g),
            ),
        ] {
            let key = conv
                .blocked_key(&plain, input.shape()[1], want.shape()[1])
                .expect("whole groups of 4 channels");
            assert_eq!(key.layout, Layout::Blocked);
            let mut whole = Array4::<f32>::from_elem(want.raw_dim(), f32::NAN);
            assert!(conv.run_blocked(&key, input.view(), w.view(), flip, whole.view_mut()));
            let mut runs = Array4::<f32>::from_elem(want.raw_dim(), f32::NAN);
            assert!(small.run_blocked(&key, input.view(), w.view(), flip, runs.view_mut()));
            assert!(whole.iter().all(|v| v.is_finite()), "every element written");
            assert_eq!(runs, whole);
            assert_close(&whole, &want);
        }
        // An input narrower than a block is read as it is.
        let key = conv.blocked_key(&plain, 3, o).unwrap();
        assert_eq!(key.layout, Layout::Direct);
        assert!(conv.blocked_key(&plain, 18, o).is_none());
        let one_by_one = NodeKey {
            kernel: [1, 1],
            ..plain.clone()
        };
        assert!(conv.blocked_key(&one_by_one, c, o).is_none());
    }

    #[test]
    fn transposes_in_place_match_out_of_place() {
        let conv = OrtConv {
            // Two images per run: the third run has one.
            run_bytes: 2 * 2 * 32 * 9 * 8 * 4,
            ..OrtConv::new(Some(2)).unwrap()
        };
        if conv.block().is_none() {
            return;
        }
        for c in [32usize, 18] {
            let g = same_size(c, 9, 8, c);
            let w = random((c, c, 3, 3), 4);
            let s0 = random((5, c, 9, 8), 5);
            let want = lrp_kernels::kernels::conv2d_transpose(s0.view(), w.view(), &g);
            let mut s = s0.clone();
            let done = conv.transpose_in_place(s.view_mut(), w.view(), &g);
            if c % 4 == 0 {
                assert!(done, "{c} channels run on the blocked kernels");
                assert_close(&s, &want);
            } else {
                // The plain Conv reads as it writes: never in place, and `s` is untouched.
                assert!(!done);
                assert_eq!(s, s0);
            }
        }
    }

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
