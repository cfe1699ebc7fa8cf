//! One-node ONNX Runtime sessions (`Y = op(A, B)`) for the relevance pass's kernels: one
//! session per key, made on first use and kept.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use lrp_onnx::proto::ModelProto;
use ndarray::{ArrayView, ArrayViewMut, Dimension};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{TensorRef, TensorRefMut};

use crate::session::{RuntimeError, environment, ort_status, use_process_allocator};

/// The sessions of one kind of node, by key, on `threads` intra-op threads.
pub(crate) struct OneNode<K> {
    threads: Option<usize>,
    sessions: Mutex<HashMap<K, Session>>,
}

impl<K> std::fmt::Debug for OneNode<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneNode")
            .field("threads", &self.threads)
            .finish()
    }
}

impl<K: Eq + Hash + Clone> OneNode<K> {
    /// No sessions yet; fails only when ONNX Runtime cannot be loaded.
    pub(crate) fn new(threads: Option<usize>) -> Result<Self, RuntimeError> {
        environment()?;
        Ok(OneNode {
            threads,
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// Runs the model of `key` (built by `model` on first use; inputs `A`, `B`, output `Y`)
    /// with `Y` written straight into `out`, which must be in standard layout. An error,
    /// leaving `out` unspecified, when `Y`'s shape is not `out`'s.
    pub(crate) fn run<DA: Dimension + 'static, DB: Dimension + 'static, D: Dimension + 'static>(
        &self,
        key: &K,
        model: impl FnOnce(&K) -> ModelProto,
        a: ArrayView<f32, DA>,
        b: ArrayView<f32, DB>,
        out: ArrayViewMut<f32, D>,
    ) -> Result<(), ort::Error> {
        use ort::AsPointer;
        if !out.is_standard_layout() {
            return Err(ort::Error::new("the output is not in standard layout"));
        }
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if !sessions.contains_key(key) {
            let session = open(&model(key), self.threads, false)?;
            sessions.insert(key.clone(), session);
        }
        let session = sessions.get_mut(key).expect("inserted above");
        let a = TensorRef::from_array_view(a)?;
        let b = TensorRef::from_array_view(b)?;
        let y = TensorRefMut::from_array_view_mut(out)?;
        let inputs = [a.ptr(), b.ptr()];
        let mut outputs = [y.ptr() as *mut ort::sys::OrtValue];
        let names = [c"A".as_ptr(), c"B".as_ptr()];
        let output_names = [c"Y".as_ptr()];
        // SAFETY: the session, the two input values and the output value are live for the
        // call; the output value wraps `out`'s elements (standard layout, checked above), which
        // ONNX Runtime writes in place of allocating its own (a preallocated output), and
        // refuses with an error when the shapes differ.
        let status = unsafe {
            (ort::api().Run)(
                session.ptr() as *mut _,
                std::ptr::null(),
                names.as_ptr(),
                inputs.as_ptr(),
                inputs.len(),
                output_names.as_ptr(),
                outputs.len(),
                outputs.as_mut_ptr(),
            )
        };
        ort_status(status).map_err(ort::Error::new)
    }
}

/// A session for `model` on `threads` intra-op threads; `quiet`: ONNX Runtime logs only fatal
/// errors (for a probe whose failure is an answer).
pub(crate) fn open(
    model: &ModelProto,
    threads: Option<usize>,
    quiet: bool,
) -> Result<Session, ort::Error> {
    let bytes = lrp_onnx::encode_model(model);
    let env = environment().map_err(|e| ort::Error::new(e.to_string()))?;
    let mut builder = Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::Level1)
        .map_err(|e| -> ort::Error { e.into() })?
        // Idle threads must not spin: the relevance pass's own threads run in between.
        .with_intra_op_spinning(false)
        .map_err(|e| -> ort::Error { e.into() })?;
    builder = use_process_allocator(builder)?;
    if let Some(n) = threads {
        builder = builder
            .with_intra_threads(n)
            .map_err(|e| -> ort::Error { e.into() })?;
    }
    if quiet {
        builder = builder
            .with_log_level(ort::logging::LogLevel::Fatal)
            .map_err(|e| -> ort::Error { e.into() })?;
    }
    builder.commit_from_memory(&bytes)
}
