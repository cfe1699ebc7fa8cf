//! The kernels against hand-computed values and naive reference implementations.

mod common;

use common::{
    ConvCase, PoolCase, PoolRule, Rng, assert_close, dot, naive_conv, naive_conv_transpose,
    naive_pool,
};
use lrp_ir::Op;
use lrp_ir::op::ParamShapes;
use lrp_kernels::kernels::*;
use lrp_kernels::{ConvGeometry, PoolGeometry, Stabilizer};
use ndarray::{Array2, Array4, array};

fn conv_op(kernel: [usize; 2], strides: [usize; 2], pads: [usize; 4], groups: usize) -> Op {
    Op::Conv {
        kernel,
        strides,
        pads,
        dilations: [1, 1],
        groups,
    }
}

fn a4(shape: (usize, usize, usize, usize), v: Vec<f32>) -> Array4<f32> {
    Array4::from_shape_vec(shape, v).unwrap()
}

// ------------------------------------------------------------------------------------------
// Convolution: hand-computed values
// ------------------------------------------------------------------------------------------

#[test]
fn conv_hand_2x2_diagonal() {
    let op = conv_op([2, 2], [1, 1], [0; 4], 1);
    let g = ConvGeometry::new(&op, &[1, 3, 3], &[1, 1, 2, 2]).unwrap();
    assert_eq!(g.output_shape(), [1, 2, 2]);
    let x = a4((1, 1, 3, 3), (1..=9).map(|v| v as f32).collect());
    let w = a4((1, 1, 2, 2), vec![1., 0., 0., -1.]);
    let y = conv2d_forward(x.view(), w.view(), &g);
    assert_eq!(y, a4((1, 1, 2, 2), vec![-4.; 4]));
    let s = Array4::ones((1, 1, 2, 2));
    let r = conv2d_transpose(s.view(), w.view(), &g);
    #[rustfmt::skip]
    let want = a4((1, 1, 3, 3), vec![
        1., 1., 0.,
        1., 0., -1.,
        0., -1., -1.,
    ]);
    assert_eq!(r, want);
}

#[test]
fn conv_hand_padding() {
    // 3×3 ones with padding 1 on a 2×2 input: every output sees the whole image.
    let op = conv_op([3, 3], [1, 1], [1, 1, 1, 1], 1);
    let g = ConvGeometry::new(&op, &[1, 2, 2], &[1, 1, 3, 3]).unwrap();
    let x = a4((1, 1, 2, 2), vec![1., 2., 3., 4.]);
    let w = Array4::ones((1, 1, 3, 3));
    assert_eq!(
        conv2d_forward(x.view(), w.view(), &g),
        a4((1, 1, 2, 2), vec![10.; 4])
    );
    let r = conv2d_transpose(Array4::ones((1, 1, 2, 2)).view(), w.view(), &g);
    assert_eq!(r, a4((1, 1, 2, 2), vec![4.; 4]));
}

#[test]
fn conv_hand_stride_2_asymmetric_pad() {
    // A 1-D convolution along W: kernel [1, 2, 3], stride 2, padding 1 left and right.
    let op = conv_op([1, 3], [1, 2], [0, 1, 0, 1], 1);
    let g = ConvGeometry::new(&op, &[1, 1, 5], &[1, 1, 1, 3]).unwrap();
    assert_eq!(g.output_shape(), [1, 1, 3]);
    let x = a4((1, 1, 1, 5), vec![1., 2., 3., 4., 5.]);
    let w = a4((1, 1, 1, 3), vec![1., 2., 3.]);
    // [0·1 + 1·2 + 2·3, 2·1 + 3·2 + 4·3, 4·1 + 5·2 + 0·3]
    assert_eq!(
        conv2d_forward(x.view(), w.view(), &g),
        a4((1, 1, 1, 3), vec![8., 20., 14.])
    );
    let s = a4((1, 1, 1, 3), vec![1., 10., 100.]);
    assert_eq!(
        conv2d_transpose(s.view(), w.view(), &g),
        a4((1, 1, 1, 5), vec![2., 13., 20., 130., 200.])
    );
}

#[test]
fn conv_hand_depthwise() {
    let op = conv_op([1, 1], [1, 1], [0; 4], 2);
    let g = ConvGeometry::new(&op, &[2, 1, 2], &[2, 1, 1, 1]).unwrap();
    let x = a4((1, 2, 1, 2), vec![1., 2., 3., 4.]);
    let w = a4((2, 1, 1, 1), vec![2., 3.]);
    assert_eq!(
        conv2d_forward(x.view(), w.view(), &g),
        a4((1, 2, 1, 2), vec![2., 4., 9., 12.])
    );
    assert_eq!(
        conv2d_transpose(x.view(), w.view(), &g),
        a4((1, 2, 1, 2), vec![2., 4., 9., 12.])
    );
}

#[test]
fn dense_hand() {
    let x = array![[1f32, 2.]];
    let w = array![[1f32, 0.], [0., 1.], [1., 1.]];
    assert_eq!(dense_forward(x.view(), w.view()), array![[1f32, 2., 3.]]);
    let s = array![[1f32, 1., 1.], [0., 0., 2.]];
    assert_eq!(
        dense_transpose(s.view(), w.view()),
        array![[2f32, 2.], [2., 2.]]
    );
}

#[test]
fn dense_adjoint() {
    let mut rng = Rng::new(7);
    let x: Array2<f32> = rng.array((3, 17));
    let w: Array2<f32> = rng.array((11, 17));
    let s: Array2<f32> = rng.array((3, 11));
    let y = dense_forward(x.view(), w.view());
    let r = dense_transpose(s.view(), w.view());
    let (a, abs) = dot(y.as_slice().unwrap(), s.as_slice().unwrap());
    let (b, _) = dot(x.as_slice().unwrap(), r.as_slice().unwrap());
    assert!((a - b).abs() <= 1e-5 * abs, "{a} vs {b}");
}

#[test]
fn mapped_dense_kernels_equal_the_mapped_weight() {
    // Blocks of 2^20 weight elements: with 300,000 inputs a block holds 3 weight rows, so 7
    // outputs take 3 blocks (the last short); with 40,000 inputs, 26 rows, so 70 outputs take 3
    // blocks. The input of the second case is a transposed view.
    let mut rng = Rng::new(11);
    let close = |a: &Array2<f32>, b: &Array2<f32>| {
        assert_eq!(a.dim(), b.dim());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(diff <= 1e-5 * scale, "{diff} of {scale}");
    };
    let f = |v: f32| v.max(0.0) * 1.5;
    for (maps, outputs, inputs, transposed) in [(2, 7, 300_000, false), (5, 70, 40_000, true)] {
        let x: Array2<f32> = if transposed {
            rng.array((inputs, maps)).reversed_axes()
        } else {
            rng.array((maps, inputs))
        };
        let w: Array2<f32> = rng.array((outputs, inputs));
        let s: Array2<f32> = rng.array((maps + 1, outputs));
        let wf = w.mapv(f);
        close(
            &dense_forward_mapped(x.view(), w.view(), f),
            &dense_forward(x.view(), wf.view()),
        );
        close(
            &dense_transpose_mapped(s.view(), w.view(), f),
            &dense_transpose(s.view(), wf.view()),
        );
    }
}

#[test]
fn bias_per_channel() {
    let mut y = Array4::<f32>::zeros((2, 3, 1, 2));
    add_channel_bias(y.view_mut(), array![1f32, 2., 3.].view());
    assert_eq!(y[[1, 2, 0, 1]], 3.0);
    assert_eq!(y[[0, 0, 0, 0]], 1.0);
}

// ------------------------------------------------------------------------------------------
// Convolution: table against naive references
// ------------------------------------------------------------------------------------------

const fn cc(
    name: &'static str,
    [c, h, w, o]: [usize; 4],
    kernel: [usize; 2],
    strides: [usize; 2],
    pads: [usize; 4],
    dil: [usize; 2],
    groups: usize,
) -> ConvCase {
    ConvCase {
        name,
        c,
        h,
        w,
        o,
        kernel,
        strides,
        pads,
        dil,
        groups,
    }
}

const CONV_CASES: &[ConvCase] = &[
    cc("3x3 s1 p1", [3, 7, 6, 4], [3, 3], [1, 1], [1; 4], [1, 1], 1),
    cc(
        "3x3 s2 asym pad",
        [2, 9, 8, 3],
        [3, 3],
        [2, 2],
        [1, 0, 2, 1],
        [1, 1],
        1,
    ),
    cc("1x1", [5, 4, 5, 3], [1, 1], [1, 1], [0; 4], [1, 1], 1),
    cc("1x1 s2", [3, 7, 7, 2], [1, 1], [2, 2], [0; 4], [1, 1], 1),
    cc(
        "4x4 s2 p1 odd",
        [2, 11, 9, 3],
        [4, 4],
        [2, 2],
        [1; 4],
        [1, 1],
        1,
    ),
    cc(
        "3x3 s3 odd",
        [2, 11, 13, 2],
        [3, 3],
        [3, 3],
        [0, 2, 1, 0],
        [1, 1],
        1,
    ),
    cc(
        "dilation 2",
        [2, 9, 9, 3],
        [3, 3],
        [1, 1],
        [2; 4],
        [2, 2],
        1,
    ),
    cc(
        "dilation 2 s2",
        [3, 10, 11, 2],
        [3, 3],
        [2, 2],
        [1, 2, 0, 1],
        [2, 2],
        1,
    ),
    cc("groups 2", [4, 6, 7, 6], [3, 3], [1, 1], [1; 4], [1, 1], 2),
    cc(
        "depthwise s2",
        [4, 9, 8, 4],
        [3, 3],
        [2, 2],
        [1; 4],
        [1, 1],
        4,
    ),
    cc(
        "depthwise x2 even",
        [3, 6, 5, 6],
        [2, 2],
        [1, 1],
        [0, 0, 1, 1],
        [1, 1],
        3,
    ),
    cc(
        "2x4 mixed",
        [2, 7, 9, 4],
        [2, 4],
        [2, 1],
        [1, 2, 0, 1],
        [1, 2],
        2,
    ),
    cc(
        "5x5 p2 small image",
        [1, 5, 5, 2],
        [5, 5],
        [1, 1],
        [2; 4],
        [1, 1],
        1,
    ),
    cc(
        "kernel = image",
        [2, 7, 7, 3],
        [7, 7],
        [1, 1],
        [0; 4],
        [1, 1],
        1,
    ),
    cc(
        "stride > kernel",
        [2, 10, 10, 2],
        [2, 2],
        [3, 3],
        [0; 4],
        [1, 1],
        1,
    ),
    cc(
        "pads bigger than kernel",
        [1, 3, 4, 2],
        [2, 2],
        [2, 2],
        [3, 2, 3, 4],
        [1, 1],
        1,
    ),
];

struct Shapes(Vec<(&'static str, Vec<usize>)>);
impl ParamShapes for Shapes {
    fn param_shape(&self, name: &str) -> Option<&[usize]> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s.as_slice())
    }
}

#[test]
fn conv_table_against_naive() {
    let mut rng = Rng::new(42);
    for case in CONV_CASES {
        let ws = case.weight_shape();
        let g = ConvGeometry::new(&case.op(), &[case.c, case.h, case.w], &ws)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let [oh, ow] = case.out_hw();
        assert_eq!(g.output_shape(), [case.o, oh, ow], "{}", case.name);
        // The IR's shape inference agrees.
        let ir = case
            .op()
            .infer_shape(
                &[&[case.c, case.h, case.w]],
                &Shapes(vec![("weight", ws.to_vec())]),
            )
            .unwrap();
        assert_eq!(ir, vec![case.o, oh, ow], "{}", case.name);

        let x = rng.array((2, case.c, case.h, case.w));
        let w = rng.array((ws[0], ws[1], ws[2], ws[3]));
        let y = conv2d_forward(x.view(), w.view(), &g);
        assert_close(&y, &naive_conv(case, &x, &w), 1e-5, case.name);

        // Transpose on a batch of another size.
        let s = rng.array((3, case.o, oh, ow));
        let r = conv2d_transpose(s.view(), w.view(), &g);
        assert_close(&r, &naive_conv_transpose(case, &s, &w), 1e-5, case.name);

        // Adjoint identity <conv(x), s> = <x, convᵀ(s)>.
        let s2 = rng.array((2, case.o, oh, ow));
        let r2 = conv2d_transpose(s2.view(), w.view(), &g);
        let (a, abs) = dot(y.as_slice().unwrap(), s2.as_slice().unwrap());
        let (b, _) = dot(x.as_slice().unwrap(), r2.as_slice().unwrap());
        assert!(
            (a - b).abs() <= 1e-5 * abs.max(1.0),
            "{}: <conv(x), s> = {a}, <x, convT(s)> = {b}",
            case.name
        );
    }
}

#[test]
fn conv_transposed_weight_view_and_empty_batch() {
    let case = &CONV_CASES[8];
    let ws = case.weight_shape();
    let g = ConvGeometry::new(&case.op(), &[case.c, case.h, case.w], &ws).unwrap();
    let mut rng = Rng::new(3);
    let x = rng.array((1, case.c, case.h, case.w));
    // The weight behind reversed strides: same values, not in standard layout.
    let w = rng.array((ws[3], ws[2], ws[1], ws[0]));
    let wv = w.view().reversed_axes();
    let want = naive_conv(case, &x, &wv.to_owned());
    assert_close(
        &conv2d_forward(x.view(), wv, &g),
        &want,
        1e-5,
        "reversed weight",
    );
    let none = Array4::<f32>::zeros((0, case.c, case.h, case.w));
    assert_eq!(conv2d_forward(none.view(), wv, &g).shape()[0], 0);
}

#[test]
#[should_panic(expected = "conv2d_forward")]
fn conv_shape_mismatch_panics() {
    let op = conv_op([3, 3], [1, 1], [0; 4], 1);
    let g = ConvGeometry::new(&op, &[1, 5, 5], &[1, 1, 3, 3]).unwrap();
    let x = Array4::<f32>::zeros((1, 2, 5, 5));
    let w = Array4::<f32>::zeros((1, 1, 3, 3));
    conv2d_forward(x.view(), w.view(), &g);
}

// ------------------------------------------------------------------------------------------
// Pools: hand-computed values
// ------------------------------------------------------------------------------------------

fn maxpool(kernel: [usize; 2], strides: [usize; 2], pads: [usize; 4], ceil_mode: bool) -> Op {
    Op::MaxPool {
        kernel,
        strides,
        pads,
        dilations: [1, 1],
        ceil_mode,
    }
}

fn avgpool(
    kernel: [usize; 2],
    strides: [usize; 2],
    pads: [usize; 4],
    count_include_pad: bool,
    ceil_mode: bool,
) -> Op {
    Op::AvgPool {
        kernel,
        strides,
        pads,
        count_include_pad,
        ceil_mode,
    }
}

#[test]
fn wta_hand_with_ties() {
    let g = PoolGeometry::new(&maxpool([2, 2], [2, 2], [0; 4], false), &[1, 4, 4]).unwrap();
    #[rustfmt::skip]
    let x = a4((1, 1, 4, 4), vec![
        1., 5., 2., 0.,
        3., 4., 8., 8.,
        0., 0., 1., 1.,
        0., 0., 1., 1.,
    ]);
    let r = a4((1, 1, 2, 2), vec![10., 20., 30., 40.]);
    #[rustfmt::skip]
    let want = a4((1, 1, 4, 4), vec![
        0., 10., 0., 0.,
        0., 0., 20., 0.,
        30., 0., 40., 0.,
        0., 0., 0., 0.,
    ]);
    assert_eq!(maxpool_winner_take_all(x.view(), r.view(), 1, &g), want);
}

#[test]
fn wta_overlapping_windows_accumulate() {
    let g = PoolGeometry::new(&maxpool([1, 2], [1, 1], [0; 4], false), &[1, 1, 3]).unwrap();
    let x = a4((1, 1, 1, 3), vec![1., 3., 2.]);
    let r = a4((1, 1, 1, 2), vec![1., 2.]);
    assert_eq!(
        maxpool_winner_take_all(x.view(), r.view(), 1, &g),
        a4((1, 1, 1, 3), vec![0., 3., 0.])
    );
}

#[test]
fn wta_padding_never_wins() {
    // All values negative: a zero pad would win if it took part.
    let g = PoolGeometry::new(&maxpool([2, 2], [1, 1], [1, 1, 0, 0], false), &[1, 2, 2]).unwrap();
    assert_eq!(g.output_shape(), [1, 2, 2]);
    let x = a4((1, 1, 2, 2), vec![-1., -2., -3., -4.]);
    let r = a4((1, 1, 2, 2), vec![1., 2., 3., 4.]);
    assert_eq!(
        maxpool_winner_take_all(x.view(), r.view(), 1, &g),
        a4((1, 1, 2, 2), vec![10., 0., 0., 0.])
    );
}

#[test]
fn wta_ceil_mode_partial_window() {
    let g = PoolGeometry::new(&maxpool([1, 2], [1, 2], [0; 4], true), &[1, 1, 5]).unwrap();
    assert_eq!(g.output_shape(), [1, 1, 3]);
    let x = a4((1, 1, 1, 5), vec![1., 2., 4., 3., 5.]);
    let r = a4((1, 1, 1, 3), vec![1., 2., 3.]);
    assert_eq!(
        maxpool_winner_take_all(x.view(), r.view(), 1, &g),
        a4((1, 1, 1, 5), vec![0., 1., 2., 0., 3.])
    );
}

#[test]
fn wta_tiling_2x2_pools_equal_the_general_windows() {
    // 2×2 / stride 2 windows tiling a 6×6 plane take the direct loop; on a 7×7 plane (the
    // last row and column left out by the floor) the same windows take the general one.
    let (n, c, k) = (2, 3, 2);
    let small = PoolGeometry::new(&maxpool([2, 2], [2, 2], [0; 4], false), &[c, 6, 6]).unwrap();
    let large = PoolGeometry::new(&maxpool([2, 2], [2, 2], [0; 4], false), &[c, 7, 7]).unwrap();
    assert_eq!(small.output_shape(), large.output_shape());
    // Small integers: many ties, resolved to the first position in both paths.
    let x7 = Array4::from_shape_fn((n, c, 7, 7), |(a, b, i, j)| {
        ((a * 7 + b * 5 + i * 3 + j * 11) % 4) as f32
    });
    let x6 = x7.slice(ndarray::s![.., .., ..6, ..6]).to_owned();
    let r = Array4::from_shape_fn((n * k, c, 3, 3), |(m, b, i, j)| {
        (m * 100 + b * 10 + i * 3 + j) as f32
    });
    let fast = maxpool_winner_take_all(x6.view(), r.view(), k, &small);
    let general = maxpool_winner_take_all(x7.view(), r.view(), k, &large);
    assert_eq!(fast, general.slice(ndarray::s![.., .., ..6, ..6]));
    assert!(
        general
            .slice(ndarray::s![.., .., 6, ..])
            .iter()
            .all(|&v| v == 0.0)
    );
}

#[test]
fn k_maps_per_image_use_their_image() {
    let g = PoolGeometry::new(&maxpool([1, 2], [1, 2], [0; 4], false), &[1, 1, 2]).unwrap();
    // Image 0 peaks on the left, image 1 on the right; two maps each.
    let x = a4((2, 1, 1, 2), vec![5., 1., 1., 5.]);
    let r = a4((4, 1, 1, 1), vec![1., 2., 3., 4.]);
    let want = a4((4, 1, 1, 2), vec![1., 0., 2., 0., 0., 3., 0., 4.]);
    assert_eq!(maxpool_winner_take_all(x.view(), r.view(), 2, &g), want);
    let prop = maxpool_proportional(x.view(), r.view(), 2, &g, Stabilizer::ZeroGuard(1e-7));
    let want = a4(
        (4, 1, 1, 2),
        vec![
            5. / 6.,
            1. / 6.,
            10. / 6.,
            2. / 6.,
            3. / 6.,
            15. / 6.,
            4. / 6.,
            20. / 6.,
        ],
    );
    assert_close(&prop, &want, 1e-6, "proportional, k = 2");
}

#[test]
fn max_proportional_hand() {
    let g = PoolGeometry::new(&maxpool([1, 2], [1, 2], [0; 4], false), &[1, 1, 4]).unwrap();
    let x = a4((1, 1, 1, 4), vec![1., 3., 0., 0.]);
    let r = a4((1, 1, 1, 2), vec![8., 5.]);
    // Second window sums to 0: ZeroGuard divides by e, x = 0 gives 0.
    let got = maxpool_proportional(x.view(), r.view(), 1, &g, Stabilizer::ZeroGuard(1e-7));
    assert_eq!(got, a4((1, 1, 1, 4), vec![2., 6., 0., 0.]));
    let got = maxpool_proportional(x.view(), r.view(), 1, &g, Stabilizer::SignEpsilon(4.0));
    assert_eq!(got, a4((1, 1, 1, 4), vec![1., 3., 0., 0.]));
}

#[test]
fn avg_gradient_count_include_pad() {
    // 3×3 input, 2×2 windows, stride 2, padding 1 at the bottom and right: 2×2 output.
    let r = Array4::<f32>::ones((1, 1, 2, 2));
    let ex = PoolGeometry::new(
        &avgpool([2, 2], [2, 2], [0, 0, 1, 1], false, false),
        &[1, 3, 3],
    )
    .unwrap();
    #[rustfmt::skip]
    let want = a4((1, 1, 3, 3), vec![
        0.25, 0.25, 0.5,
        0.25, 0.25, 0.5,
        0.5, 0.5, 1.0,
    ]);
    assert_eq!(avgpool_gradient(r.view(), &ex), want);
    let inc = PoolGeometry::new(
        &avgpool([2, 2], [2, 2], [0, 0, 1, 1], true, false),
        &[1, 3, 3],
    )
    .unwrap();
    assert_eq!(ex.clone().with_count_include_pad(true), inc);
    assert_eq!(
        avgpool_gradient(r.view(), &inc),
        Array4::from_elem((1, 1, 3, 3), 0.25)
    );
}

#[test]
fn avg_ceil_mode_overhang_is_not_counted() {
    // W = 6, k = 3, s = 2, pads 1/1, ceil: 4 windows; the last one starts at input 5 and covers
    // {5, pad, beyond}: 2 positions count with count_include_pad (not 3 = the kernel), 1 without.
    let inc = PoolGeometry::new(
        &avgpool([1, 3], [1, 2], [0, 1, 0, 1], true, true),
        &[1, 1, 6],
    )
    .unwrap();
    assert_eq!(inc.output_shape(), [1, 1, 4]);
    let r = a4((1, 1, 1, 4), vec![0., 0., 0., 1.]);
    let got = avgpool_gradient(r.view(), &inc);
    assert_eq!(got, a4((1, 1, 1, 6), vec![0., 0., 0., 0., 0., 0.5]));
    let ex = PoolGeometry::new(
        &avgpool([1, 3], [1, 2], [0, 1, 0, 1], false, true),
        &[1, 1, 6],
    )
    .unwrap();
    assert_eq!(
        avgpool_gradient(r.view(), &ex),
        a4((1, 1, 1, 6), vec![0., 0., 0., 0., 0., 1.])
    );
    // Floor mode has one window less.
    let fl = PoolGeometry::new(
        &avgpool([1, 3], [1, 2], [0, 1, 0, 1], true, false),
        &[1, 1, 6],
    )
    .unwrap();
    assert_eq!(fl.output_shape(), [1, 1, 3]);
    // ceil_mode where the last window would start in the end padding: dropped.
    let dropped =
        PoolGeometry::new(&maxpool([1, 2], [1, 2], [0, 0, 0, 1], true), &[1, 1, 4]).unwrap();
    assert_eq!(dropped.output_shape(), [1, 1, 2]);
}

#[test]
fn avg_proportional_hand() {
    // One window [pad, 1, 3]: z = 4/n; R_i = x_i/n · R / stab(z).
    let x = a4((1, 1, 1, 2), vec![1., 3.]);
    let r = a4((1, 1, 1, 1), vec![7.]);
    for (cip, want) in [(true, [1.0, 3.0]), (false, [7. / 6., 21. / 6.])] {
        let g = PoolGeometry::new(
            &avgpool([1, 3], [1, 3], [0, 1, 0, 0], cip, false),
            &[1, 1, 2],
        )
        .unwrap();
        // n = 3: z = 4/3, stab = 7/3, R_i = x_i/3 · 7/(7/3) = x_i.
        // n = 2: z = 2, stab = 3, R_i = x_i/2 · 7/3.
        let got = avgpool_proportional(x.view(), r.view(), 1, &g, Stabilizer::SignEpsilon(1.0));
        assert_close(&got, &a4((1, 1, 1, 2), want.to_vec()), 1e-6, "avg z-rule");
        // With a negligible stabiliser the divisor cancels: R_i = x_i R / Σx.
        let got = avgpool_proportional(x.view(), r.view(), 1, &g, Stabilizer::ZeroGuard(1e-7));
        assert_close(
            &got,
            &a4((1, 1, 1, 2), vec![7. / 4., 21. / 4.]),
            1e-6,
            "avg z-rule",
        );
    }
}

#[test]
fn global_pools_hand() {
    let x = a4((1, 2, 2, 2), vec![1., 2., 3., 2., 0., 5., 5., -1.]);
    let r = a4((1, 2, 1, 1), vec![8., 10.]);
    assert_eq!(
        global_maxpool_winner_take_all(x.view(), r.view(), 1),
        a4((1, 2, 2, 2), vec![0., 0., 8., 0., 0., 10., 0., 0.])
    );
    assert_eq!(
        global_avgpool_gradient(r.view(), 2, 2),
        a4((1, 2, 2, 2), vec![2., 2., 2., 2., 2.5, 2.5, 2.5, 2.5])
    );
    let got = global_avgpool_proportional(x.view(), r.view(), 1, Stabilizer::ZeroGuard(1e-7));
    let want = a4(
        (1, 2, 2, 2),
        vec![1., 2., 3., 2., 0., 50. / 9., 50. / 9., -10. / 9.],
    );
    assert_close(&got, &want, 1e-6, "global avg z-rule");
    let got = global_maxpool_proportional(x.view(), r.view(), 1, Stabilizer::ZeroGuard(1e-7));
    assert_close(&got, &want, 1e-6, "global max proportional");
}

// ------------------------------------------------------------------------------------------
// Pools: table against naive references
// ------------------------------------------------------------------------------------------

#[allow(clippy::too_many_arguments)]
const fn pc(
    name: &'static str,
    max: bool,
    [c, h, w]: [usize; 3],
    kernel: [usize; 2],
    strides: [usize; 2],
    pads: [usize; 4],
    dil: [usize; 2],
    ceil: bool,
    cip: bool,
) -> PoolCase {
    PoolCase {
        name,
        max,
        c,
        h,
        w,
        kernel,
        strides,
        pads,
        dil,
        ceil,
        cip,
    }
}

const POOL_CASES: &[PoolCase] = &[
    pc(
        "max 2x2 s2",
        true,
        [2, 6, 6],
        [2, 2],
        [2, 2],
        [0; 4],
        [1, 1],
        false,
        false,
    ),
    pc(
        "max 3x3 s2 p1",
        true,
        [2, 7, 7],
        [3, 3],
        [2, 2],
        [1; 4],
        [1, 1],
        false,
        false,
    ),
    pc(
        "max 3x3 s1 asym",
        true,
        [1, 5, 6],
        [3, 3],
        [1, 1],
        [0, 1, 2, 0],
        [1, 1],
        false,
        false,
    ),
    pc(
        "max 2x2 s2 ceil",
        true,
        [2, 5, 7],
        [2, 2],
        [2, 2],
        [0; 4],
        [1, 1],
        true,
        false,
    ),
    pc(
        "max 3x3 s2 p1 ceil",
        true,
        [2, 8, 8],
        [3, 3],
        [2, 2],
        [1; 4],
        [1, 1],
        true,
        false,
    ),
    pc(
        "max dilation 2",
        true,
        [2, 7, 6],
        [2, 2],
        [1, 1],
        [0; 4],
        [2, 2],
        false,
        false,
    ),
    pc(
        "max mixed",
        true,
        [1, 8, 9],
        [3, 2],
        [3, 1],
        [1, 0, 0, 1],
        [1, 2],
        true,
        false,
    ),
    pc(
        "max dil ceil pad",
        true,
        [2, 9, 8],
        [3, 3],
        [2, 3],
        [1, 2, 2, 1],
        [2, 1],
        true,
        false,
    ),
    pc(
        "avg 2x2 s2",
        false,
        [2, 5, 5],
        [2, 2],
        [2, 2],
        [0; 4],
        [1, 1],
        false,
        false,
    ),
    pc(
        "avg 3x3 p1 incl",
        false,
        [2, 6, 5],
        [3, 3],
        [1, 1],
        [1; 4],
        [1, 1],
        false,
        true,
    ),
    pc(
        "avg 3x3 p1 excl",
        false,
        [2, 6, 5],
        [3, 3],
        [1, 1],
        [1; 4],
        [1, 1],
        false,
        false,
    ),
    pc(
        "avg 3x3 s2 ceil incl",
        false,
        [1, 6, 6],
        [3, 3],
        [2, 2],
        [1; 4],
        [1, 1],
        true,
        true,
    ),
    pc(
        "avg 3x3 s2 ceil excl",
        false,
        [1, 6, 6],
        [3, 3],
        [2, 2],
        [1; 4],
        [1, 1],
        true,
        false,
    ),
    pc(
        "avg 2x3 ceil incl",
        false,
        [2, 5, 7],
        [2, 3],
        [1, 2],
        [0, 2, 1, 0],
        [1, 1],
        true,
        true,
    ),
    pc(
        "avg 2x3 ceil excl",
        false,
        [2, 5, 7],
        [2, 3],
        [1, 2],
        [0, 2, 1, 0],
        [1, 1],
        true,
        false,
    ),
    pc(
        "avg whole image",
        false,
        [3, 4, 5],
        [4, 5],
        [1, 1],
        [0; 4],
        [1, 1],
        false,
        false,
    ),
];

#[test]
fn pool_table_against_naive() {
    let mut rng = Rng::new(1234);
    let stabs = [Stabilizer::ZeroGuard(1e-7), Stabilizer::SignEpsilon(0.1)];
    for case in POOL_CASES {
        let g = PoolGeometry::new(&case.op(), &[case.c, case.h, case.w])
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let [oh, ow] = case.out_hw();
        assert_eq!(g.output_shape(), [case.c, oh, ow], "{}", case.name);
        let ir = case
            .op()
            .infer_shape(&[&[case.c, case.h, case.w]], &Shapes(vec![]))
            .unwrap();
        assert_eq!(ir, vec![case.c, oh, ow], "{}", case.name);
        for k in [1, 2] {
            let name = format!("{} (k = {k})", case.name);
            // Coarse values: many ties (first argmax must win) and zero sums.
            let x = rng.coarse((2, case.c, case.h, case.w));
            let r = rng.array((2 * k, case.c, oh, ow));
            if case.max {
                let got = maxpool_winner_take_all(x.view(), r.view(), k, &g);
                let want = naive_pool(case, &PoolRule::WinnerTakeAll, &x, &r, k);
                assert_close(&got, &want, 1e-6, &name);
                // Every window has a real position: the total is conserved.
                assert!((got.sum() - r.sum()).abs() < 1e-4, "{name}: conservation");
                let xp = rng.array((2, case.c, case.h, case.w)).mapv(f32::abs);
                for stab in stabs {
                    let got = maxpool_proportional(xp.view(), r.view(), k, &g, stab);
                    let want = naive_pool(case, &PoolRule::MaxProportional(stab), &xp, &r, k);
                    assert_close(&got, &want, 1e-5, &name);
                }
            } else {
                for stab in stabs {
                    let got = avgpool_proportional(x.view(), r.view(), k, &g, stab);
                    let want = naive_pool(case, &PoolRule::AvgProportional(stab), &x, &r, k);
                    assert_close(&got, &want, 1e-5, &name);
                }
                // Positive inputs and a negligible stabiliser: the z-rule conserves.
                let xp = rng
                    .array((2, case.c, case.h, case.w))
                    .mapv(|v| v.abs() + 0.1);
                let got = avgpool_proportional(xp.view(), r.view(), k, &g, stabs[0]);
                assert!((got.sum() - r.sum()).abs() < 1e-3, "{name}: conservation");
                let got = avgpool_gradient(r.view(), &g);
                let want = naive_pool(case, &PoolRule::AvgGradient, &x, &r, k);
                assert_close(&got, &want, 1e-6, &name);
                if !case.cip {
                    assert!((got.sum() - r.sum()).abs() < 1e-4, "{name}: conservation");
                }
            }
        }
    }
}

#[test]
fn global_pools_equal_full_window_pools() {
    let mut rng = Rng::new(99);
    let x = rng.coarse((2, 3, 4, 5));
    let r = rng.array((4, 3, 1, 1));
    let full = PoolCase {
        name: "global",
        max: true,
        c: 3,
        h: 4,
        w: 5,
        kernel: [4, 5],
        strides: [1, 1],
        pads: [0; 4],
        dil: [1, 1],
        ceil: false,
        cip: false,
    };
    assert_close(
        &global_maxpool_winner_take_all(x.view(), r.view(), 2),
        &naive_pool(&full, &PoolRule::WinnerTakeAll, &x, &r, 2),
        1e-6,
        "global max",
    );
    let stab = Stabilizer::SignEpsilon(1e-6);
    assert_close(
        &global_avgpool_proportional(x.view(), r.view(), 2, stab),
        &naive_pool(&full, &PoolRule::AvgProportional(stab), &x, &r, 2),
        1e-5,
        "global avg",
    );
    assert_close(
        &global_avgpool_gradient(r.view(), 4, 5),
        &naive_pool(&full, &PoolRule::AvgGradient, &x, &r, 1),
        1e-6,
        "global avg gradient",
    );
    let g = PoolGeometry::new(&Op::GlobalMaxPool, &[3, 4, 5]).unwrap();
    assert_eq!(g, PoolGeometry::global(3, 4, 5));
}

#[test]
fn par_rows_writes_every_position_of_every_row() {
    // Rows longer than one parallel piece (2^16), and a row count that is not a power of two.
    let (rows, len) = (3, (1 << 16) + 7);
    let v = par_rows(rows, len, |m, i| (m * len + i) as f32);
    assert_eq!(v.len(), rows * len);
    assert!(v.iter().enumerate().all(|(k, &x)| x == k as f32));
    assert!(par_rows(0, 5, |_, _| 1.0).is_empty());
    assert!(par_rows(4, 0, |_, _| 1.0).is_empty());
}

#[test]
fn par_rows_with_fills_rows_from_slices_in_runs() {
    // Rows longer than one parallel piece, filled in runs of 10 (as a per-unit bias would be).
    let (rows, len) = (2, (1 << 16) + 25);
    let src: Vec<f32> = (0..rows * len).map(|k| k as f32).collect();
    let v = lrp_kernels::kernels::par_rows_with(rows, len, |m, span, out| {
        let mut i = span.start;
        while i < span.end {
            let end = ((i / 10 + 1) * 10).min(span.end);
            out.extend(src[m * len + i..m * len + end].iter().map(|x| x + 0.5));
            i = end;
        }
        assert_eq!(out.remaining(), 0);
    });
    assert!(v.iter().zip(&src).all(|(a, b)| *a == b + 0.5));
}

#[test]
#[should_panic(expected = "left short")]
fn par_rows_with_refuses_a_piece_left_short() {
    lrp_kernels::kernels::par_rows_with(2, 8, |_, span, out| {
        out.extend(span.skip(1).map(|i| i as f32))
    });
}
