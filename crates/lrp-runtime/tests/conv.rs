//! ONNX Runtime's convolutions as the relevance kernels' `Sconv`: the forward map and its
//! transpose agree with the kernels' own on every geometry kind (strides, pads larger than
//! the kernel, dilations, groups, odd sizes that leave rows unread, few input channels, channel
//! counts in whole blocks of the blocked-layout kernels and not), write every element of the
//! output, and the kernels route large convolutions to the backend in scope.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use lrp_ir::Op;
use lrp_kernels::ConvGeometry;
use lrp_kernels::kernels::{Backends, Sconv, conv2d_forward, conv2d_transpose, use_backends};
use lrp_runtime::OrtConv;
use lrp_testkit::random_normal;
use ndarray::{Array4, ArrayView4, ArrayViewMut4};

fn tensor(shape: [usize; 4], seed: u64) -> Array4<f32> {
    Array4::from_shape_vec(shape, random_normal(seed, shape.iter().product(), 1.0)).unwrap()
}

fn max_rel(got: &Array4<f32>, want: &Array4<f32>) -> f32 {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    got.iter()
        .zip(want)
        .fold(0f32, |m, (g, w)| m.max((g - w).abs()))
        / scale
}

/// (input [C, H, W], out channels, kernel, strides, pads, dilations, groups)
type Case = (
    [usize; 3],
    usize,
    [usize; 2],
    [usize; 2],
    [usize; 4],
    [usize; 2],
    usize,
);

const CASES: &[Case] = &[
    ([8, 13, 11], 6, [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 1),
    ([8, 13, 11], 6, [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], 1),
    ([8, 14, 12], 6, [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], 1),
    ([4, 15, 16], 5, [7, 7], [2, 2], [3, 3, 3, 3], [1, 1], 1),
    ([6, 9, 9], 4, [1, 1], [2, 2], [0, 0, 0, 0], [1, 1], 1),
    ([6, 9, 9], 4, [1, 1], [1, 1], [1, 1, 1, 1], [1, 1], 1),
    ([6, 12, 10], 4, [3, 3], [1, 1], [2, 2, 2, 2], [2, 2], 1),
    ([6, 12, 10], 4, [3, 2], [1, 1], [0, 1, 2, 0], [1, 1], 1),
    ([8, 10, 10], 6, [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 2),
    ([8, 11, 10], 8, [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], 8),
    // Few input channels (a first layer): the transpose runs as ConvTranspose.
    ([3, 13, 11], 16, [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 1),
    ([2, 12, 10], 8, [3, 3], [1, 1], [2, 2, 2, 2], [2, 2], 1),
    // Channels in whole blocks and not (padded to blocks, in and out), on the blocked kernels
    // where the processor has them; 18 is no multiple of 4, so its forward map runs plain.
    ([32, 12, 11], 48, [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 1),
    ([20, 13, 12], 24, [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 1),
    ([24, 15, 14], 40, [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], 1),
    ([16, 12, 10], 20, [3, 2], [1, 1], [0, 1, 2, 0], [1, 1], 1),
    ([20, 14, 13], 36, [3, 3], [1, 1], [2, 2, 2, 2], [2, 2], 1),
    ([36, 9, 9], 20, [1, 1], [2, 2], [0, 0, 0, 0], [1, 1], 1),
    ([18, 10, 9], 20, [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 1),
    ([64, 10, 10], 16, [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 2),
];

fn geometry(case: &Case) -> ConvGeometry {
    let &(input, o, kernel, strides, pads, dilations, groups) = case;
    let op = Op::Conv {
        kernel,
        strides,
        pads,
        dilations,
        groups,
    };
    let weight = [o, input[0] / groups, kernel[0], kernel[1]];
    ConvGeometry::new(&op, &input, &weight).unwrap()
}

#[test]
fn forward_and_transpose_match_the_kernels() {
    let ort = OrtConv::new(Some(2)).unwrap();
    for (i, case) in CASES.iter().enumerate() {
        let g = geometry(case);
        let [c, h, w] = g.input_shape();
        let [o, oh, ow] = g.output_shape();
        let n = 3;
        let x = tensor([n, c, h, w], 10 + i as u64);
        let wt = tensor(g.weight_shape(), 20 + i as u64);
        let s = tensor([n, o, oh, ow], 30 + i as u64);

        // NaN first: the backend must write every element.
        let want = conv2d_forward(x.view(), wt.view(), &g);
        let mut got = Array4::<f32>::from_elem(want.raw_dim(), f32::NAN);
        assert!(
            ort.forward(x.view(), wt.view(), &g, got.view_mut()),
            "{case:?}"
        );
        assert!(got.iter().all(|v| v.is_finite()), "forward left {case:?}");
        assert!(max_rel(&got, &want) < 1e-5, "forward {case:?}");

        let want = conv2d_transpose(s.view(), wt.view(), &g);
        let mut got = Array4::<f32>::from_elem(want.raw_dim(), f32::NAN);
        assert!(
            ort.transpose(s.view(), wt.view(), &g, got.view_mut()),
            "{case:?}"
        );
        assert!(got.iter().all(|v| v.is_finite()), "transpose left {case:?}");
        assert!(
            max_rel(&got, &want) < 1e-5,
            "transpose {case:?}: {}",
            max_rel(&got, &want)
        );
    }
}

#[test]
fn owned_transposes_match_with_and_without_the_backend() {
    // Same channels and size in and out (written in place by the blocked kernels where the
    // processor has them), and a geometry that changes the channels (never in place).
    let ort = std::sync::Arc::new(OrtConv::new(Some(2)).unwrap());
    for case in [
        ([32, 20, 18], 32, [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 1),
        ([32, 20, 18], 48, [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 1),
    ] {
        let g = geometry(&case);
        let [o, oh, ow] = g.output_shape();
        let wt = tensor(g.weight_shape(), 41);
        let s = tensor([3, o, oh, ow], 42);
        let want = conv2d_transpose(s.view(), wt.view(), &g);
        let own = lrp_kernels::kernels::conv2d_transpose_owned(s.clone(), wt.view(), &g);
        assert!(max_rel(&own, &want) < 1e-5, "{case:?} without a backend");
        let given = s.clone();
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
        let at = given.as_ptr();
        let got = {
            let _guard = use_backends(Backends {
                sgemm: None,
                conv: Some(ort.clone()),
                ..Backends::default()
            });
            lrp_kernels::kernels::conv2d_transpose_owned(given, wt.view(), &g)
        };
        assert_eq!(got.dim(), want.dim());
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // The blocked kernels are there: the same shape is written in place.
            assert_eq!(got.as_ptr() == at, o == 32, "{case:?}");
        }
        assert!(
            max_rel(&got, &want) < 1e-5,
            "{case:?}: {}",
            max_rel(&got, &want)
        );
    }
}

#[derive(Debug)]
struct Counting {
    inner: OrtConv,
    forwards: AtomicUsize,
    transposes: AtomicUsize,
}

impl Sconv for Counting {
    fn forward(
        &self,
        x: ArrayView4<f32>,
        w: ArrayView4<f32>,
        g: &ConvGeometry,
        out: ArrayViewMut4<f32>,
    ) -> bool {
        self.forwards.fetch_add(1, Ordering::SeqCst);
        self.inner.forward(x, w, g, out)
    }

    fn transpose(
        &self,
        s: ArrayView4<f32>,
        w: ArrayView4<f32>,
        g: &ConvGeometry,
        out: ArrayViewMut4<f32>,
    ) -> bool {
        self.transposes.fetch_add(1, Ordering::SeqCst);
        self.inner.transpose(s, w, g, out)
    }
}

#[test]
fn the_kernels_route_large_convolutions_to_the_backend() {
    let counting = Arc::new(Counting {
        inner: OrtConv::new(Some(1)).unwrap(),
        forwards: AtomicUsize::new(0),
        transposes: AtomicUsize::new(0),
    });
    let g = geometry(&([32, 40, 40], 32, [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 1));
    let x = tensor([2, 32, 40, 40], 1);
    let wt = tensor(g.weight_shape(), 2);
    let s = tensor([2, 32, 40, 40], 3);
    let (own_f, own_t) = (
        conv2d_forward(x.view(), wt.view(), &g),
        conv2d_transpose(s.view(), wt.view(), &g),
    );
    let (f, t) = {
        let _guard = use_backends(Backends {
            sgemm: None,
            conv: Some(counting.clone()),
            ..Backends::default()
        });
        (
            conv2d_forward(x.view(), wt.view(), &g),
            conv2d_transpose(s.view(), wt.view(), &g),
        )
    };
    assert_eq!(counting.forwards.load(Ordering::SeqCst), 1);
    assert_eq!(counting.transposes.load(Ordering::SeqCst), 1);
    assert!(max_rel(&f, &own_f) < 1e-5);
    assert!(max_rel(&t, &own_t) < 1e-5);
    // Small convolutions and f64 ones stay in the kernels; the guard restored the default.
    let small = geometry(&([2, 4, 4], 2, [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 1));
    {
        let _guard = use_backends(Backends {
            sgemm: None,
            conv: Some(counting.clone()),
            ..Backends::default()
        });
        conv2d_forward(
            tensor([1, 2, 4, 4], 4).view(),
            tensor([2, 2, 3, 3], 5).view(),
            &small,
        );
        conv2d_forward(x.mapv(f64::from).view(), wt.mapv(f64::from).view(), &g);
    }
    conv2d_forward(x.view(), wt.view(), &g);
    assert_eq!(counting.forwards.load(Ordering::SeqCst), 1);
}
