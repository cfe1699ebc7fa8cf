//! BatchNorm folding leaves the forward pass unchanged (to f32 rounding), checked with the
//! kernels on random layers and statistics.

mod common;

use common::{Rng, assert_close};
use lrp_ir::{
    FORMAT_VERSION, Graph, GraphDef, InputDef, Layout, NodeDef, Op, Weights, fold_batchnorm,
};
use lrp_kernels::ConvGeometry;
use lrp_kernels::kernels::{add_channel_bias, conv2d_forward, dense_forward};
use ndarray::{Array2, Array4, ArrayD, Axis, Ix1, Ix2, Ix4};

fn node(name: &str, op: Op, inputs: &[&str], params: &[(&str, String)]) -> NodeDef {
    NodeDef {
        name: name.into(),
        op,
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    }
}

fn bn_node(name: &str, input: &str, eps: f32) -> NodeDef {
    node(
        name,
        Op::BatchNorm { epsilon: eps },
        &[input],
        &["scale", "bias", "mean", "var"].map(|p| (p, format!("{name}.{p}"))),
    )
}

fn bn_stats(rng: &mut Rng, w: &mut Weights, name: &str, c: usize) {
    let mut v = |lo: f32, hi: f32| {
        ArrayD::from_shape_vec(vec![c], (0..c).map(|_| rng.range(lo, hi)).collect()).unwrap()
    };
    let (scale, bias, mean, var) = (v(-2.0, 2.0), v(-1.0, 1.0), v(-1.0, 1.0), v(0.05, 2.0));
    w.insert(format!("{name}.scale"), scale);
    w.insert(format!("{name}.bias"), bias);
    w.insert(format!("{name}.mean"), mean);
    w.insert(format!("{name}.var"), var);
}

fn graph(input: Vec<usize>, output: &str, nodes: Vec<NodeDef>, weights: Weights) -> Graph {
    let layout = if input.len() == 3 {
        Layout::NCHW
    } else {
        Layout::Other
    };
    let def = GraphDef {
        format: FORMAT_VERSION,
        name: "fold".into(),
        weights: "fold.safetensors".into(),
        input: InputDef {
            name: "x".into(),
            shape: input,
            layout,
            preprocess: None,
        },
        output: output.into(),
        nodes,
        labels: None,
    };
    Graph::new(def, weights).unwrap()
}

/// Inference BatchNorm over axis 1, in f32 as a runtime computes it.
fn batchnorm(y: &mut ndarray::ArrayViewMut<f32, ndarray::IxDyn>, g: &Graph, bn: &str) {
    let id = g.node_id(bn).unwrap();
    let Op::BatchNorm { epsilon } = g.nodes()[id].op else {
        panic!("{bn} is not a BatchNorm")
    };
    let p = |n: &str| {
        g.param(id, n)
            .unwrap()
            .clone()
            .into_dimensionality::<Ix1>()
            .unwrap()
    };
    let (scale, bias, mean, var) = (p("scale"), p("bias"), p("mean"), p("var"));
    for mut sample in y.axis_iter_mut(Axis(0)) {
        for (c, mut ch) in sample.axis_iter_mut(Axis(0)).enumerate() {
            ch.mapv_inplace(|v| (v - mean[c]) / (var[c] + epsilon).sqrt() * scale[c] + bias[c]);
        }
    }
}

/// Conv `name` of `g` (weights, bias if any) applied to `x`.
fn conv_layer(g: &Graph, name: &str, x: &Array4<f32>) -> Array4<f32> {
    let id = g.node_id(name).unwrap();
    let w = g
        .param(id, "weight")
        .unwrap()
        .clone()
        .into_dimensionality::<Ix4>()
        .unwrap();
    let input = &x.shape()[1..];
    let geo = ConvGeometry::new(&g.nodes()[id].op, input, w.shape()).unwrap();
    let mut y = conv2d_forward(x.view(), w.view(), &geo);
    if let Some(b) = g.param(id, "bias") {
        let b = b.clone().into_dimensionality::<Ix1>().unwrap();
        add_channel_bias(y.view_mut(), b.view());
    }
    y
}

fn dense_layer(g: &Graph, name: &str, x: &Array2<f32>) -> Array2<f32> {
    let id = g.node_id(name).unwrap();
    let w = g
        .param(id, "weight")
        .unwrap()
        .clone()
        .into_dimensionality::<Ix2>()
        .unwrap();
    let mut y = dense_forward(x.view(), w.view());
    if let Some(b) = g.param(id, "bias") {
        let b = b.clone().into_dimensionality::<Ix1>().unwrap();
        y += &b;
    }
    y
}

struct ConvCase {
    c: usize,
    hw: [usize; 2],
    o: usize,
    op: Op,
    bias: bool,
    /// Two BatchNorms in a row.
    chain: bool,
}

#[test]
fn folded_conv_forward_equals_conv_then_batchnorm() {
    let conv = |kernel: usize, stride: usize, pad: usize, dil: usize, groups: usize| Op::Conv {
        kernel: [kernel, kernel],
        strides: [stride, stride],
        pads: [pad; 4],
        dilations: [dil, dil],
        groups,
    };
    let cases = [
        ConvCase {
            c: 3,
            hw: [6, 5],
            o: 4,
            op: conv(3, 1, 1, 1, 1),
            bias: true,
            chain: false,
        },
        ConvCase {
            c: 4,
            hw: [7, 7],
            o: 4,
            op: conv(3, 2, 1, 1, 4),
            bias: false,
            chain: false,
        },
        ConvCase {
            c: 4,
            hw: [9, 8],
            o: 6,
            op: conv(3, 1, 2, 2, 2),
            bias: true,
            chain: true,
        },
        ConvCase {
            c: 2,
            hw: [5, 5],
            o: 3,
            op: conv(1, 1, 0, 1, 1),
            bias: false,
            chain: true,
        },
    ];
    let mut rng = Rng::new(2024);
    for (k, case) in cases.iter().enumerate() {
        let Op::Conv { kernel, groups, .. } = case.op else {
            unreachable!()
        };
        let mut w = Weights::new();
        let ws = [case.o, case.c / groups, kernel[0], kernel[1]];
        w.insert("conv.w", rng.array(ws.to_vec()));
        let mut params = vec![("weight", "conv.w".to_string())];
        if case.bias {
            w.insert("conv.b", rng.array(vec![case.o]));
            params.push(("bias", "conv.b".to_string()));
        }
        bn_stats(&mut rng, &mut w, "bn", case.o);
        let mut nodes = vec![
            node("conv", case.op.clone(), &["x"], &params),
            bn_node("bn", "conv", 1e-5),
        ];
        let mut last = "bn";
        if case.chain {
            bn_stats(&mut rng, &mut w, "bn2", case.o);
            nodes.push(bn_node("bn2", "bn", 1e-3));
            last = "bn2";
        }
        nodes.push(node("relu", Op::Relu, &[last], &[]));
        let g = graph(vec![case.c, case.hw[0], case.hw[1]], "relu", nodes, w);

        let x: Array4<f32> = rng.array((3, case.c, case.hw[0], case.hw[1]));
        let mut want = conv_layer(&g, "conv", &x).into_dyn();
        batchnorm(&mut want.view_mut(), &g, "bn");
        if case.chain {
            batchnorm(&mut want.view_mut(), &g, "bn2");
        }

        let folded = fold_batchnorm(g.clone()).unwrap();
        let names: Vec<&str> = folded.nodes().iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["conv", "relu"], "case {k}");
        let got = conv_layer(&folded, "conv", &x).into_dyn();
        assert_close(&got, &want, 1e-5, &format!("conv case {k}"));
        // The original graph's tensors are untouched.
        assert_eq!(g.weights().get("conv.w"), g.param(0, "weight"));
    }
}

#[test]
fn folded_dense_forward_equals_dense_then_batchnorm() {
    let mut rng = Rng::new(77);
    for bias in [true, false] {
        let mut w = Weights::new();
        w.insert("fc.w", rng.array(vec![5, 7]));
        let mut params = vec![("weight", "fc.w".to_string())];
        if bias {
            w.insert("fc.b", rng.array(vec![5]));
            params.push(("bias", "fc.b".to_string()));
        }
        bn_stats(&mut rng, &mut w, "bn", 5);
        let nodes = vec![
            node("fc", Op::Dense, &["x"], &params),
            bn_node("bn", "fc", 1e-3),
        ];
        let g = graph(vec![7], "bn", nodes, w);
        let x: Array2<f32> = rng.array((4, 7));
        let mut want = dense_layer(&g, "fc", &x).into_dyn();
        batchnorm(&mut want.view_mut(), &g, "bn");
        let folded = fold_batchnorm(g).unwrap();
        assert_eq!(folded.def().output, "fc");
        assert_eq!(folded.nodes().len(), 1);
        let got = dense_layer(&folded, "fc", &x).into_dyn();
        assert_close(&got, &want, 1e-5, &format!("dense, bias = {bias}"));
    }
}
