//! ONNX Runtime sessions over exported graphs.

use std::path::PathBuf;
use std::sync::OnceLock;

use lrp_ir::{Graph, NodeId, SharedTensor};
use ndarray::{ArrayD, ArrayViewD};
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use crate::export::{ExportOutputs, SuppliedWeight, WeightData, supplied_weights, to_onnx};

/// The name under which the weights of an exported graph are given to ONNX Runtime.
const WEIGHTS_FILE: &str = "lrp-graph-weights.bin";

/// Errors of running a graph.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The ONNX Runtime library is missing or failed to load.
    #[error("ONNX Runtime: {0}")]
    Library(String),
    /// The requested device is not available.
    #[error("{0}")]
    Device(String),
    /// The input batch does not fit the graph.
    #[error("{0}")]
    Input(String),
    /// ONNX Runtime failed to create a session or to run.
    #[error("ONNX Runtime failed on graph '{graph}': {message}")]
    Ort {
        /// The graph's name.
        graph: String,
        /// ONNX Runtime's message.
        message: String,
    },
}

/// Where the forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// ONNX Runtime's CPU provider.
    #[default]
    Cpu,
    /// ONNX Runtime's CUDA provider (needs the `cuda` feature and a CUDA build of ONNX Runtime).
    Cuda,
}

/// The file name of the ONNX Runtime library this project is tested with.
pub const ORT_LIBRARY_FILE: &str = "libonnxruntime.so.1.31.1";

/// Locates the ONNX Runtime shared library: `$ORT_DYLIB_PATH` if set, else
/// `libonnxruntime.so*` next to the running executable or in `lib/` beside its folder, else the
/// `.ort/` folder of the source tree this crate was built from (where `scripts/setup.sh` puts it).
pub fn ort_library() -> Result<PathBuf, RuntimeError> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(RuntimeError::Library(format!(
                "ORT_DYLIB_PATH is set to {}, which is not a file",
                p.display()
            )))
        };
    }
    let mut dirs = Vec::new();
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(PathBuf::from))
    {
        dirs.push(exe_dir.clone());
        if let Some(up) = exe_dir.parent() {
            dirs.push(up.join("lib"));
        }
    }
    dirs.push(PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../.ort"
    )));
    for d in &dirs {
        for name in [ORT_LIBRARY_FILE, "libonnxruntime.so"] {
            let p = d.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(RuntimeError::Library(format!(
        "cannot find {ORT_LIBRARY_FILE}; run scripts/setup.sh (it fetches the library from the onnxruntime wheel on PyPI) or set ORT_DYLIB_PATH to its path (looked in: {})",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

pub(crate) fn environment() -> Result<&'static Environment, RuntimeError> {
    static ENV: OnceLock<Result<Environment, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let path = ort_library().map_err(|e| e.to_string())?;
        let builder =
            ort::init_from(&path).map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        let env = builder
            .with_name("lrp-graph")
            .build()
            .map_err(|e| format!("cannot create the environment: {e}"))?;
        PROCESS_ALLOCATOR
            .set(register_process_allocator(&env).is_ok())
            .expect("set once, with the environment");
        Ok(env)
    })
    .as_ref()
    .map_err(|m| RuntimeError::Library(m.trim_start_matches("ONNX Runtime: ").to_string()))
}

/// Whether the environment holds [`ProcessAllocator`], which sessions use.
static PROCESS_ALLOCATOR: OnceLock<bool> = OnceLock::new();

/// Alignment of the blocks handed to ONNX Runtime (that of its own CPU allocator).
const ORT_ALIGN: usize = 64;

/// The process's global allocator as ONNX Runtime's CPU allocator, registered with the
/// environment and used by every session (the forward pass and the relevance pass's kernels).
///
/// ONNX Runtime's own arena keeps what it allocates to itself: the forward pass's intermediate
/// tensors (hundreds of MB at VGG16 batch 8) stayed there while the relevance pass faulted in
/// fresh memory of its own. Through this allocator they return to the process's allocator when
/// ONNX Runtime frees them, and the relevance pass reuses them (docs/performance.md, ninth
/// session). The arena's other role, scratch buffers shared between the kernels' sessions, is
/// the global allocator's too.
#[repr(C)]
struct ProcessAllocator {
    /// ONNX Runtime's view (first, so that its pointer is the struct's).
    ort: ort::sys::OrtAllocator,
    /// CPU memory, default type.
    info: *mut ort::sys::OrtMemoryInfo,
}

/// The size of a block, stored `ORT_ALIGN` bytes before the pointer handed out (`free` gets
/// no size, and the global allocator needs the layout).
unsafe extern "system" fn process_alloc(
    _: *mut ort::sys::OrtAllocator,
    size: usize,
) -> *mut std::ffi::c_void {
    let Some(layout) = size
        .checked_add(ORT_ALIGN)
        .and_then(|n| std::alloc::Layout::from_size_align(n, ORT_ALIGN).ok())
    else {
        return std::ptr::null_mut();
    };
    // SAFETY: the layout's size is not zero.
    let base = unsafe { std::alloc::alloc(layout) };
    if base.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: the block starts with ORT_ALIGN (≥ size_of::<usize>()) bytes of its own, aligned.
    unsafe {
        base.cast::<usize>().write(size);
        base.add(ORT_ALIGN).cast()
    }
}

/// Frees a block of [`process_alloc`].
unsafe extern "system" fn process_free(_: *mut ort::sys::OrtAllocator, p: *mut std::ffi::c_void) {
    if p.is_null() {
        return;
    }
    // SAFETY: p came from process_alloc, which stored the size ORT_ALIGN bytes before it and
    // allocated with this layout.
    unsafe {
        let base = p.cast::<u8>().sub(ORT_ALIGN);
        let size = base.cast::<usize>().read();
        std::alloc::dealloc(
            base,
            std::alloc::Layout::from_size_align_unchecked(size + ORT_ALIGN, ORT_ALIGN),
        );
    }
}

/// The memory info of a [`ProcessAllocator`].
unsafe extern "system" fn process_info(
    a: *const ort::sys::OrtAllocator,
) -> *const ort::sys::OrtMemoryInfo {
    // SAFETY: ONNX Runtime calls this with the pointer it was given: the first field of a
    // ProcessAllocator (repr(C)).
    unsafe { (*a.cast::<ProcessAllocator>()).info }
}

/// Registers a [`ProcessAllocator`] with the environment.
fn register_process_allocator(env: &Environment) -> Result<(), String> {
    use ort::AsPointer;
    use ort::sys::{OrtAllocatorType, OrtMemType};
    let api = ort::api();
    let mut info = std::ptr::null_mut();
    // SAFETY: plain constructor call with a valid out-pointer.
    ort_status(unsafe {
        (api.CreateCpuMemoryInfo)(
            OrtAllocatorType::OrtDeviceAllocator,
            OrtMemType::OrtMemTypeDefault,
            &mut info,
        )
    })?;
    // SAFETY: an all-empty allocator, filled in below.
    let mut ort = unsafe { ort::sys::OrtAllocator::default() };
    // Version 18: Alloc, Free, Info and an optional Reserve (left empty), nothing later.
    ort.version = 18;
    ort.Alloc = Some(process_alloc);
    ort.Free = Some(process_free);
    ort.Info = Some(process_info);
    // It lives as long as the environment, for the rest of the process.
    let allocator = Box::leak(Box::new(ProcessAllocator { ort, info }));
    // SAFETY: a live environment and an allocator that outlives it.
    ort_status(unsafe { (api.RegisterAllocator)(env.ptr() as *mut _, &mut allocator.ort) })
}

/// Has a session allocate with the environment's [`ProcessAllocator`], where there is one.
pub(crate) fn use_process_allocator(
    builder: ort::session::builder::SessionBuilder,
) -> ort::Result<ort::session::builder::SessionBuilder> {
    if PROCESS_ALLOCATOR.get().copied().unwrap_or(false) {
        builder
            .with_config_entry("session.use_env_allocators", "1")
            .map_err(Into::into)
    } else {
        Ok(builder)
    }
}

/// Activations of one forward pass, per node.
#[derive(Debug, Clone)]
pub struct Activations {
    batch: usize,
    values: Vec<Option<ArrayD<f32>>>,
}

impl Activations {
    /// The batch size.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Node `id`'s output `[N, ...]`, if it was computed.
    pub fn get(&self, id: NodeId) -> Option<&ArrayD<f32>> {
        self.values.get(id).and_then(|v| v.as_ref())
    }

    /// Takes node `id`'s output out.
    pub fn take(&mut self, id: NodeId) -> Option<ArrayD<f32>> {
        self.values.get_mut(id).and_then(|v| v.take())
    }
}

/// How [`SuppliedWeights::add`] hands weights to ONNX Runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sharing {
    /// Dense weights as shared initializers, which ONNX Runtime reads in place; all others as
    /// external initializers, which it copies (and may rewrite: Conv kernels into its blocked
    /// layout, batch norms into convolutions). Reading in place saves a copy of most of a
    /// classifier's weights in a cold process (0.5 GB for VGG16); a shared initializer must not
    /// be one that an optimisation reads, which fails on its placeholder.
    InPlace,
    /// Every weight as an external initializer (copied).
    Copied,
}

/// Weights handed to ONNX Runtime from their own memory: the ONNX values over them, released on
/// drop, and the handles that keep the memory alive until then.
#[derive(Default)]
struct SuppliedWeights {
    values: Vec<*mut ort::sys::OrtValue>,
    _tensors: Vec<SharedTensor>,
    /// Whether some weight is read in place (not copied by ONNX Runtime).
    in_place: bool,
}

// SAFETY: the values are read-only tensors over memory this struct keeps alive; they are only
// read by ONNX Runtime (from any thread) and released once, on drop.
unsafe impl Send for SuppliedWeights {}
// SAFETY: as above; no method touches them through a shared reference.
unsafe impl Sync for SuppliedWeights {}

impl SuppliedWeights {
    /// Adds every weight to `builder` as an initializer over the tensor's own memory, shared or
    /// external as `sharing` says.
    fn add(
        builder: &mut ort::session::builder::SessionBuilder,
        weights: Vec<SuppliedWeight>,
        sharing: Sharing,
    ) -> Result<Self, String> {
        use ort::AsPointer;
        use ort::sys::{ONNXTensorElementDataType, OrtAllocatorType, OrtMemType};
        let api = ort::api();
        let mut out = SuppliedWeights::default();
        let mut info = std::ptr::null_mut();
        // SAFETY: a plain constructor call with a valid out pointer.
        ort_status(unsafe {
            (api.CreateCpuMemoryInfo)(
                OrtAllocatorType::OrtDeviceAllocator,
                OrtMemType::OrtMemTypeDefault,
                &mut info,
            )
        })?;
        let add_all = || -> Result<(), String> {
            for SuppliedWeight {
                name,
                tensor,
                dense_only,
            } in weights
            {
                let t = tensor.view();
                if !t.is_standard_layout() || t.is_empty() {
                    return Err(format!("weight '{name}' cannot be shared"));
                }
                let shape: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
                let cname = std::ffi::CString::new(name).map_err(|e| e.to_string())?;
                let mut value = std::ptr::null_mut();
                // SAFETY: the data pointer and byte length describe `t`'s contiguous elements,
                // which `out` keeps alive (and unchanged) until the value is released. ONNX
                // Runtime only reads initializers; one read in place from a mapped weights file
                // is in a private, writable map, so even a write could not fault.
                ort_status(unsafe {
                    (api.CreateTensorWithDataAsOrtValue)(
                        info,
                        t.as_ptr() as *mut std::ffi::c_void,
                        t.len() * std::mem::size_of::<f32>(),
                        shape.as_ptr(),
                        shape.len(),
                        ONNXTensorElementDataType::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
                        &mut value,
                    )
                })?;
                out.values.push(value);
                drop(t);
                out._tensors.push(tensor);
                let in_place = sharing == Sharing::InPlace && dense_only;
                out.in_place |= in_place;
                // SAFETY: the options pointer is the builder's own, and the name and value are
                // live for the call; the value outlives the session (see `Forward`'s field
                // order). A shared initializer replaces the model's declaration of the same
                // name and is used where it is; an external one replaces it before the model is
                // optimised, from a copy.
                ort_status(unsafe {
                    if in_place {
                        (api.AddInitializer)(builder.ptr() as *mut _, cname.as_ptr(), value)
                    } else {
                        let (names, values) = ([cname.as_ptr()], [value as *const _]);
                        (api.AddExternalInitializers)(
                            builder.ptr() as *mut _,
                            names.as_ptr(),
                            values.as_ptr(),
                            1,
                        )
                    }
                })?;
            }
            Ok(())
        };
        let result = add_all();
        // SAFETY: made above; the values hold their own reference to what they need.
        unsafe { (api.ReleaseMemoryInfo)(info) };
        result.map(|()| out)
    }
}

impl Drop for SuppliedWeights {
    fn drop(&mut self) {
        let api = ort::api();
        for &v in &self.values {
            // SAFETY: made by CreateTensorWithDataAsOrtValue and released once.
            unsafe { (api.ReleaseValue)(v) };
        }
    }
}

/// Ok for a null status; else its message (and the status is released).
pub(crate) fn ort_status(status: ort::sys::OrtStatusPtr) -> Result<(), String> {
    if status.0.is_null() {
        return Ok(());
    }
    let api = ort::api();
    // SAFETY: a non-null status from the API, read once and released.
    let message = unsafe {
        let m = std::ffi::CStr::from_ptr((api.GetErrorMessage)(status.0))
            .to_string_lossy()
            .into_owned();
        (api.ReleaseStatus)(status.0);
        m
    };
    Err(message)
}

/// A graph loaded into an ONNX Runtime session, ready to run batches.
pub struct Forward {
    session: Session,
    /// Dropped after the session that reads them.
    supplied: SuppliedWeights,
    graph_name: String,
    input_name: String,
    input_shape: Vec<usize>,
    outputs: Vec<(NodeId, String)>,
    node_count: usize,
}

impl std::fmt::Debug for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forward")
            .field("graph", &self.graph_name)
            .field("outputs", &self.outputs.len())
            .finish()
    }
}

impl Forward {
    /// Exports `graph` with the requested outputs and opens a session on `device`, with
    /// `threads` intra-op threads (None: ONNX Runtime's default, all cores). ONNX Runtime reads
    /// the Dense weights (most of a classifier's) in the graph's own memory and copies the
    /// others (Conv kernels into its blocked layout); where it refuses that, it copies them all,
    /// from the graph's memory or else from an in-memory weights file.
    pub fn new(
        graph: &Graph,
        device: Device,
        outputs: ExportOutputs,
        threads: Option<usize>,
    ) -> Result<Self, RuntimeError> {
        // In order, until ONNX Runtime accepts one. The attempts that have a fallback keep
        // ONNX Runtime's own error log quiet: their failure is expected on some graphs.
        let mut attempts = [
            (WeightData::Supplied, Sharing::InPlace),
            (WeightData::Supplied, Sharing::Copied),
            (WeightData::Blob(WEIGHTS_FILE), Sharing::Copied),
        ]
        .into_iter()
        .peekable();
        while let Some((data, sharing)) = attempts.next() {
            let fallback = attempts.peek().is_some();
            match Self::open(graph, device, &outputs, threads, data, sharing, fallback) {
                Err(RuntimeError::Ort { .. }) if fallback => continue,
                done => return done,
            }
        }
        unreachable!("the last attempt returns")
    }

    fn open(
        graph: &Graph,
        device: Device,
        outputs: &ExportOutputs,
        threads: Option<usize>,
        data: WeightData<'_>,
        sharing: Sharing,
        quiet: bool,
    ) -> Result<Self, RuntimeError> {
        let env = environment()?;
        let (model, blob) = to_onnx(graph, outputs, data);
        let bytes = lrp_onnx::encode_model(&model);
        let name = graph.def().name.clone();
        let ort_err = |e: ort::Error| RuntimeError::Ort {
            graph: name.clone(),
            message: e.to_string(),
        };
        let mut builder = Session::builder(env)
            .map_err(ort_err)?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| ort_err(e.into()))?;
        if let Some(n) = threads {
            builder = builder
                .with_intra_threads(n)
                .map_err(|e| ort_err(e.into()))?;
        }
        if quiet {
            builder = builder
                .with_log_level(ort::logging::LogLevel::Fatal)
                .map_err(|e| ort_err(e.into()))?;
        }
        match device {
            Device::Cpu => {}
            Device::Cuda => builder = with_cuda(builder)?,
        }
        // No prepacked copies of the weights: they cost a cold process time and memory
        // (docs/performance.md) and gained nothing measurable in warm runs. No memory
        // pattern either: from the second run on it planned one more block for the exported
        // activations beside the arena's (0.2 GiB at VGG16 batch 8), and no run was faster.
        // Its tensors come from the process's allocator, for the relevance pass to reuse.
        builder = use_process_allocator(builder).map_err(ort_err)?;
        builder = builder
            .with_config_entry("session.disable_prepacking", "1")
            .map_err(|e| ort_err(e.into()))?
            .with_memory_pattern(false)
            .map_err(|e| ort_err(e.into()))?;
        let supplied = match blob {
            Some(blob) => {
                builder = builder
                    .with_external_initializer_file_in_memory(WEIGHTS_FILE, blob)
                    .map_err(|e| ort_err(e.into()))?;
                SuppliedWeights::default()
            }
            None => SuppliedWeights::add(&mut builder, supplied_weights(graph), sharing)
                .map_err(|m| ort_err(ort::Error::new(m)))?,
        };
        let session = builder.commit_from_memory(&bytes).map_err(ort_err)?;
        let outs = model
            .graph
            .as_ref()
            .expect("exported")
            .output
            .iter()
            .map(|o| {
                let n = o.name().to_string();
                (graph.node_id(&n).expect("outputs are nodes"), n)
            })
            .collect();
        Ok(Forward {
            session,
            supplied,
            graph_name: graph.def().name.clone(),
            input_name: graph.input().name.clone(),
            input_shape: graph.input().shape.clone(),
            outputs: outs,
            node_count: graph.nodes().len(),
        })
    }

    /// Whether ONNX Runtime reads weights in the graph's own memory (the Dense weights; it
    /// copies the rest).
    pub fn shares_weights(&self) -> bool {
        self.supplied.in_place
    }

    /// Runs a batch `[N, ...input shape]` and returns the exposed activations (copied out of
    /// ONNX Runtime).
    pub fn run(&mut self, input: ArrayViewD<'_, f32>) -> Result<Activations, RuntimeError> {
        self.run_view(input, |v| Activations {
            batch: v.batch,
            values: v
                .values
                .iter()
                .map(|a| a.as_ref().map(|a| a.to_owned()))
                .collect(),
        })
    }

    /// Runs a batch `[N, ...input shape]` and hands `f` views of the exposed activations in
    /// ONNX Runtime's own output buffers: no copy, valid while `f` runs.
    pub fn run_view<R>(
        &mut self,
        input: ArrayViewD<'_, f32>,
        f: impl FnOnce(&ActivationViews<'_>) -> R,
    ) -> Result<R, RuntimeError> {
        if input.ndim() != self.input_shape.len() + 1
            || input.shape()[1..] != self.input_shape[..]
            || input.shape()[0] == 0
        {
            return Err(RuntimeError::Input(format!(
                "input batch has shape {:?}; the graph takes [N, {}]",
                input.shape(),
                self.input_shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let graph_name = self.graph_name.clone();
        let ort_err = |e: ort::Error| RuntimeError::Ort {
            graph: graph_name.clone(),
            message: e.to_string(),
        };
        let batch = input.shape()[0];
        let input = input.as_standard_layout();
        let tensor = TensorRef::from_array_view(&input).map_err(ort_err)?;
        let results = self
            .session
            .run(vec![(self.input_name.as_str(), tensor)])
            .map_err(ort_err)?;
        let mut values = vec![None; self.node_count];
        for (id, name) in &self.outputs {
            let v = results.get(name).ok_or_else(|| RuntimeError::Ort {
                graph: graph_name.clone(),
                message: format!("output '{name}' is missing"),
            })?;
            let arr = v
                .try_extract_array::<f32>()
                .map_err(|e| RuntimeError::Ort {
                    graph: graph_name.clone(),
                    message: format!("output '{name}': {e}"),
                })?;
            values[*id] = Some(arr);
        }
        Ok(f(&ActivationViews { batch, values }))
    }
}

/// Activations of one forward pass, per node, as views of ONNX Runtime's output buffers (see
/// [`Forward::run_view`]).
#[derive(Debug)]
pub struct ActivationViews<'a> {
    batch: usize,
    values: Vec<Option<ArrayViewD<'a, f32>>>,
}

impl<'a> ActivationViews<'a> {
    /// The batch size.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Node `id`'s output `[N, ...]`, if it was computed.
    pub fn get(&self, id: NodeId) -> Option<&ArrayViewD<'a, f32>> {
        self.values.get(id).and_then(|v| v.as_ref())
    }

    /// The activations of images `images` (a range of the batch) only. Panics when the range is
    /// empty or goes past the batch.
    pub fn images(&self, images: std::ops::Range<usize>) -> ActivationViews<'a> {
        assert!(
            images.start < images.end && images.end <= self.batch,
            "images {images:?} of a batch of {}",
            self.batch
        );
        ActivationViews {
            batch: images.len(),
            values: self
                .values
                .iter()
                .map(|v| {
                    v.as_ref().map(|a| {
                        a.clone()
                            .slice_axis_move(ndarray::Axis(0), ndarray::Slice::from(images.clone()))
                    })
                })
                .collect(),
        }
    }
}

#[cfg(feature = "cuda")]
fn with_cuda(
    builder: ort::session::builder::SessionBuilder,
) -> Result<ort::session::builder::SessionBuilder, RuntimeError> {
    let ep = ort::ep::CUDA::default().build().error_on_failure();
    builder.with_execution_providers([ep]).map_err(|e| {
        RuntimeError::Device(format!(
            "the CUDA execution provider could not be loaded ({e}); this needs the CUDA build of ONNX Runtime (onnxruntime-gpu 1.31.1, set ORT_DYLIB_PATH to its libonnxruntime.so), CUDA 13 with cuBLAS and cuDNN 9, and a GPU; use --device cpu otherwise"
        ))
    })
}

#[cfg(not(feature = "cuda"))]
fn with_cuda(
    _: ort::session::builder::SessionBuilder,
) -> Result<ort::session::builder::SessionBuilder, RuntimeError> {
    Err(RuntimeError::Device(
        "this build of lrp-graph has no CUDA support; rebuild with `cargo build --release --features cuda`, or use --device cpu".into(),
    ))
}

/// Runs an arbitrary ONNX model (its bytes) on one input batch with ONNX Runtime's CPU provider
/// and returns its outputs in order: the reference that converted graphs are checked against.
pub fn run_onnx_bytes(
    bytes: &[u8],
    input: ArrayViewD<'_, f32>,
) -> Result<Vec<ArrayD<f32>>, RuntimeError> {
    let env = environment()?;
    let ort_err = |e: ort::Error| RuntimeError::Ort {
        graph: "(original model)".into(),
        message: e.to_string(),
    };
    let mut session = Session::builder(env)
        .map_err(ort_err)?
        .commit_from_memory(bytes)
        .map_err(ort_err)?;
    let input_name = session
        .inputs()
        .first()
        .map(|i| i.name().to_string())
        .ok_or_else(|| RuntimeError::Input("the model has no inputs".into()))?;
    let names: Vec<String> = session
        .outputs()
        .iter()
        .map(|o| o.name().to_string())
        .collect();
    let input = input.as_standard_layout();
    let tensor = TensorRef::from_array_view(&input).map_err(ort_err)?;
    let results = session
        .run(vec![(input_name.as_str(), tensor)])
        .map_err(ort_err)?;
    names
        .iter()
        .map(|n| {
            results
                .get(n)
                .ok_or_else(|| ort_err(ort::Error::new(format!("output '{n}' is missing"))))?
                .try_extract_array::<f32>()
                .map(|a| a.to_owned())
                .map_err(ort_err)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lrp_testkit::{VggConfig, random_normal};

    #[test]
    fn shared_and_copied_weights_give_the_same_outputs() {
        // The copies are only the fallbacks of `Forward::new`: run each directly.
        let model = VggConfig::new(10, 32, 4)
            .width_div(8)
            .classifier_width(64)
            .build();
        let graph = lrp_import::import_onnx_model(&model, "mem.onnx".as_ref(), "m")
            .unwrap()
            .graph;
        let x = ArrayD::from_shape_vec(
            ndarray::IxDyn(&[2, 3, 32, 32]),
            random_normal(5, 2 * 3 * 32 * 32, 1.0),
        )
        .unwrap();
        let outs = ExportOutputs::Final;
        let run = |data, sharing| {
            let mut f =
                Forward::open(&graph, Device::Cpu, &outs, Some(1), data, sharing, false).unwrap();
            let shared = f.shares_weights();
            let y = f
                .run(x.view())
                .unwrap()
                .get(graph.output_id())
                .unwrap()
                .clone();
            (shared, y)
        };
        let (shared, a) = run(WeightData::Supplied, Sharing::InPlace);
        let (supplied_copied, b) = run(WeightData::Supplied, Sharing::Copied);
        let (copied, c) = run(WeightData::Blob(WEIGHTS_FILE), Sharing::Copied);
        assert!(shared && !supplied_copied && !copied);
        assert_eq!(a, b);
        assert_eq!(a, c);
    }
}
