//! ONNX Runtime's matrix product as the relevance kernels' `Sgemm`: every orientation of the
//! operands gives the kernels' own product, and `matmul` routes large f32 products to it.

use std::sync::Arc;

use lrp_kernels::kernels::{Backends, Sgemm, matmul, use_backends};
use lrp_runtime::OrtSgemm;
use lrp_testkit::random_normal;
use ndarray::{Array2, ArrayView2};

fn matrix(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    Array2::from_shape_vec((rows, cols), random_normal(seed, rows * cols, 1.0)).unwrap()
}

fn reference(a: ArrayView2<f32>, b: ArrayView2<f32>) -> Array2<f64> {
    a.mapv(f64::from).dot(&b.mapv(f64::from))
}

fn max_rel(got: &Array2<f32>, want: &Array2<f64>) -> f64 {
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .fold(0f64, |m, (g, w)| m.max((f64::from(*g) - w).abs()))
        / scale
}

#[test]
fn every_orientation_matches() {
    let ort = OrtSgemm::new(Some(2)).unwrap();
    let (m, k, n) = (37, 53, 29);
    let a = matrix(m, k, 1);
    let at = matrix(k, m, 2);
    let b = matrix(k, n, 3);
    let bt = matrix(n, k, 4);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let av = if ta { at.t() } else { a.view() };
        let bv = if tb { bt.t() } else { b.view() };
        let mut out = Array2::<f32>::zeros((m, n));
        assert!(ort.sgemm(av, bv, out.view_mut()), "({ta}, {tb})");
        let err = max_rel(&out, &reference(av, bv));
        assert!(err < 1e-5, "({ta}, {tb}): {err}");
    }
    // A view that is neither (a strided slice) is declined, and `out` left alone.
    let wide = matrix(m, 2 * k, 5);
    let strided = wide.slice(ndarray::s![.., ..;2]);
    let mut out = Array2::<f32>::from_elem((m, n), 7.0);
    assert!(!ort.sgemm(strided, b.view(), out.view_mut()));
    assert!(out.iter().all(|&v| v == 7.0));
}

#[test]
fn matmul_uses_the_backend_in_scope() {
    #[derive(Debug)]
    struct Counting(OrtSgemm, std::sync::atomic::AtomicUsize);
    impl Sgemm for Counting {
        fn sgemm(
            &self,
            a: ArrayView2<f32>,
            b: ArrayView2<f32>,
            out: ndarray::ArrayViewMut2<f32>,
        ) -> bool {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.0.sgemm(a, b, out)
        }
    }
    let counting = Arc::new(Counting(
        OrtSgemm::new(Some(1)).unwrap(),
        Default::default(),
    ));
    let (m, k, n) = (128, 128, 128); // 2^21 multiply-adds: large enough
    let a = matrix(m, k, 6);
    let b = matrix(k, n, 7);
    let want = reference(a.view(), b.view());
    {
        let _guard = use_backends(Backends {
            sgemm: Some(counting.clone()),
            conv: None,
            ..Backends::default()
        });
        let mut out = Array2::<f32>::zeros((m, n));
        matmul(a.view(), b.view(), &mut out.view_mut());
        assert!(max_rel(&out, &want) < 1e-5);
        // Small products stay with the kernels' own code.
        let mut small = Array2::<f32>::zeros((4, 4));
        matmul(
            a.slice(ndarray::s![..4, ..4]),
            b.slice(ndarray::s![..4, ..4]),
            &mut small.view_mut(),
        );
    }
    assert_eq!(counting.1.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Out of scope: the kernels' own product again.
    let mut out = Array2::<f32>::zeros((m, n));
    matmul(a.view(), b.view(), &mut out.view_mut());
    assert_eq!(counting.1.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(max_rel(&out, &want) < 1e-5);
}
