//! ONNX Runtime allocates the forward pass's tensors with the process's global allocator, so
//! that what it frees is reused by the relevance pass. (`parity.rs` checks the outputs of the
//! same sessions.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use lrp_import::import_onnx_model;
use lrp_runtime::{Device, ExportOutputs, Forward};
use lrp_testkit::{VggConfig, random_normal};
use ndarray::{ArrayD, IxDyn};

/// The system allocator, counting the bytes of blocks aligned to 64 bytes (those that ONNX
/// Runtime asks for; Rust's own arrays of f32 ask for 4).
struct Counting;

static ALIGNED_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() == 64 {
            ALIGNED_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: the caller's layout, as given.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's block and layout, as given.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn forward_tensors_come_from_the_global_allocator() {
    let (batch, hw) = (2, 32);
    let model = VggConfig::new(10, hw, 3)
        .width_div(8)
        .classifier_width(64)
        .build();
    let graph = import_onnx_model(&model, "mem.onnx".as_ref(), "m")
        .expect("import")
        .graph;
    let x = ArrayD::from_shape_vec(
        IxDyn(&[batch, 3, hw, hw]),
        random_normal(5, batch * 3 * hw * hw, 1.0),
    )
    .unwrap();
    let mut fwd = Forward::new(&graph, Device::Cpu, ExportOutputs::All, Some(1)).expect("session");
    let before = ALIGNED_BYTES.load(Ordering::Relaxed);
    let acts = fwd.run(x.view()).expect("run");
    let during = ALIGNED_BYTES.load(Ordering::Relaxed) - before;
    // Every exported activation is a tensor of ONNX Runtime's, in a block of its own.
    let exported: usize = graph
        .topo_order()
        .iter()
        .filter_map(|&id| acts.get(id))
        .map(|a| a.len() * 4)
        .sum();
    assert!(
        during >= exported,
        "ONNX Runtime allocated {during} bytes with the global allocator during the run, less \
         than the {exported} bytes of the activations it exported"
    );
}
