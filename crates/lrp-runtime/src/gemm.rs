//! Single-precision matrix products on ONNX Runtime (its MLAS kernels), for the relevance pass.

use std::sync::Mutex;

use lrp_kernels::kernels::Sgemm;
use lrp_onnx::attr_type;
use lrp_onnx::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, ValueInfoProto,
};
use ndarray::{ArrayView2, ArrayViewMut2};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use crate::export::{Dim, f32_value_info};
use crate::session::{RuntimeError, environment};

/// `Y = op(A)·op(B)` on ONNX Runtime's CPU provider: one session per pair of transpose flags,
/// made on first use. Operands are passed without copies when they (or their transposes) are
/// in standard layout.
pub struct OrtSgemm {
    threads: Option<usize>,
    sessions: Mutex<[Option<Session>; 4]>,
}

impl std::fmt::Debug for OrtSgemm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtSgemm")
            .field("threads", &self.threads)
            .finish()
    }
}

impl OrtSgemm {
    /// A product on `threads` intra-op threads (None: ONNX Runtime's default).
    pub fn new(threads: Option<usize>) -> Result<Self, RuntimeError> {
        environment()?;
        Ok(OrtSgemm {
            threads,
            sessions: Mutex::new([None, None, None, None]),
        })
    }

    fn run(
        &self,
        a: ArrayView2<f32>,
        b: ArrayView2<f32>,
        mut out: ArrayViewMut2<f32>,
    ) -> Result<bool, ort::Error> {
        // An operand in standard layout goes as it is; a transposed one as its transpose.
        let (a, ta) = match orient(a) {
            Some(x) => x,
            None => return Ok(false),
        };
        let (b, tb) = match orient(b) {
            Some(x) => x,
            None => return Ok(false),
        };
        let k = usize::from(ta) * 2 + usize::from(tb);
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions[k].is_none() {
            sessions[k] = Some(small_session(&gemm_model(ta, tb), self.threads)?);
        }
        let session = sessions[k].as_mut().expect("made above");
        let ta_ = TensorRef::from_array_view(a)?;
        let tb_ = TensorRef::from_array_view(b)?;
        let results = session.run(ort::inputs!["A" => ta_, "B" => tb_])?;
        let y = results["Y"].try_extract_array::<f32>()?;
        if y.shape() != out.shape() {
            return Ok(false);
        }
        out.assign(
            &y.into_dimensionality::<ndarray::Ix2>()
                .map_err(|e| ort::Error::new(e.to_string()))?,
        );
        Ok(true)
    }
}

/// A session for a one-node model of the relevance pass, on `threads` intra-op threads.
pub(crate) fn small_session(
    model: &ModelProto,
    threads: Option<usize>,
) -> Result<Session, ort::Error> {
    let bytes = lrp_onnx::encode_model(model);
    let env = environment().map_err(|e| ort::Error::new(e.to_string()))?;
    let mut builder = Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::Level1)
        .map_err(|e| -> ort::Error { e.into() })?
        // Idle threads must not spin: the relevance pass's own threads run in between.
        .with_intra_op_spinning(false)
        .map_err(|e| -> ort::Error { e.into() })?;
    if let Some(n) = threads {
        builder = builder
            .with_intra_threads(n)
            .map_err(|e| -> ort::Error { e.into() })?;
    }
    builder.commit_from_memory(&bytes)
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
