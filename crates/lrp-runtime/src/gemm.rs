//! Single-precision matrix products on ONNX Runtime (its MLAS kernels), for the relevance pass.

use lrp_kernels::kernels::Sgemm;
use lrp_onnx::attr_type;
use lrp_onnx::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, ValueInfoProto,
};
use ndarray::{ArrayView2, ArrayViewMut2};

use crate::export::{Dim, f32_value_info};
use crate::session::RuntimeError;
use crate::small::OneNode;

/// `Y = op(A)·op(B)` on ONNX Runtime's CPU provider: one session per pair of transpose flags,
/// made on first use. Operands are passed without copies when they (or their transposes) are
/// in standard layout.
#[derive(Debug)]
pub struct OrtSgemm {
    sessions: OneNode<(bool, bool)>,
}

impl OrtSgemm {
    /// A product on `threads` intra-op threads (None: ONNX Runtime's default).
    pub fn new(threads: Option<usize>) -> Result<Self, RuntimeError> {
        Ok(OrtSgemm {
            sessions: OneNode::new(threads)?,
        })
    }

    fn run(
        &self,
        a: ArrayView2<f32>,
        b: ArrayView2<f32>,
        out: ArrayViewMut2<f32>,
    ) -> Result<bool, ort::Error> {
        // An operand in standard layout goes as it is; a transposed one as its transpose.
        let (Some((a, ta)), Some((b, tb))) = (orient(a), orient(b)) else {
            return Ok(false);
        };
        self.sessions
            .run(&(ta, tb), |&(ta, tb)| gemm_model(ta, tb), a, b, out)?;
        Ok(true)
    }
}

/// `(x, false)` for a standard-layout view, `(xᵀ, true)` for the transpose of one.
fn orient(x: ArrayView2<f32>) -> Option<(ArrayView2<f32>, bool)> {
    if x.is_standard_layout() {
        Some((x, false))
    } else if x.t().is_standard_layout() {
        Some((x.reversed_axes(), true))
    } else {
        None
    }
}

impl Sgemm for OrtSgemm {
    fn sgemm(&self, a: ArrayView2<f32>, b: ArrayView2<f32>, out: ArrayViewMut2<f32>) -> bool {
        // Any failure falls back to the kernels' own product.
        self.run(a, b, out).unwrap_or(false)
    }
}

fn matrix(name: &str, rows: &str, cols: &str) -> ValueInfoProto {
    f32_value_info(name, &[Dim::Symbolic(rows), Dim::Symbolic(cols)])
}

fn gemm_model(trans_a: bool, trans_b: bool) -> ModelProto {
    let flag = |name: &str, v: bool| AttributeProto {
        name: Some(name.into()),
        r#type: Some(attr_type::INT),
        i: Some(i64::from(v)),
        ..Default::default()
    };
    let (ar, ac) = if trans_a { ("k", "m") } else { ("m", "k") };
    let (br, bc) = if trans_b { ("n", "k") } else { ("k", "n") };
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        producer_name: Some("lrp-graph".into()),
        graph: Some(GraphProto {
            name: Some("sgemm".into()),
            node: vec![NodeProto {
                name: Some("gemm".into()),
                op_type: Some("Gemm".into()),
                input: vec!["A".into(), "B".into()],
                output: vec!["Y".into()],
                attribute: vec![flag("transA", trans_a), flag("transB", trans_b)],
                ..Default::default()
            }],
            input: vec![matrix("A", ar, ac), matrix("B", br, bc)],
            output: vec![matrix("Y", "m", "n")],
            ..Default::default()
        }),
        ..Default::default()
    }
}
