//! Canonicalisation passes: pure rewrites of a [`Graph`] into an equivalent graph that the
//! relevance pass handles better. Each takes the graph by value and rebuilds it with
//! [`Graph::new`], so the result is validated and shape-inferred like any loaded graph.
//!
//! - [`fold_batchnorm`]: BatchNorm folded into the Conv or Dense layer before it.
//! - [`strip_softmax`]: a trailing Softmax removed, so that the pass starts at the logits.

use std::collections::{BTreeSet, HashMap};

use ndarray::{ArrayD, ArrayViewD, Axis};

use crate::error::IrError;
use crate::graph::{Graph, NodeId};
use crate::op::Op;
use crate::weights::Weights;

/// One BatchNorm that [`fold_batchnorm_with_report`] folded, and the layer it went into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoldedBatchNorm {
    /// The BatchNorm node (now gone).
    pub batchnorm: String,
    /// The Conv or Dense node that absorbed it.
    pub into: String,
}

/// Folds every BatchNorm into the Conv or Dense node before it, where that is exact.
///
/// A BatchNorm is folded when its input is a Conv or Dense node whose output nothing else reads
/// (no other node, no other input slot, not the graph output). With `a = scale/√(var + ε)` per
/// output channel, the layer gets `W' = W·a` (row `o` of the weight scaled by `a_o`) and
/// `b' = (b − mean)·a + bias` (`b = 0` where the layer had no bias), computed in f64 and stored
/// as f32 under fresh keys (`<layer>.weight.folded`, `<layer>.bias.folded`), so that tensors
/// shared with other nodes are left as they are. The BatchNorm node disappears; its consumers,
/// and the graph output if it was the BatchNorm, read the layer instead. Tensors that only the
/// folded nodes used are removed from the weights. Chains (Conv → BN → BN) fold completely.
/// Other BatchNorms stay.
///
/// Fails where `var + ε ≤ 0` in some channel of a foldable BatchNorm (the error names it).
pub fn fold_batchnorm(graph: Graph) -> Result<Graph, IrError> {
    fold_batchnorm_with_report(graph).map(|(g, _)| g)
}

/// [`fold_batchnorm`], also returning which BatchNorms were folded into which layers, in
/// topological order.
pub fn fold_batchnorm_with_report(graph: Graph) -> Result<(Graph, Vec<FoldedBatchNorm>), IrError> {
    let order: Vec<NodeId> = graph.topo_order().to_vec();
    let (mut def, mut weights) = graph.into_parts();
    let by_name: HashMap<String, NodeId> = def
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.clone(), i))
        .collect();
    // How many input slots read each tensor (a tensor read twice by one node counts twice).
    let mut readers: HashMap<String, usize> = HashMap::new();
    for n in &def.nodes {
        for src in &n.inputs {
            *readers.entry(src.clone()).or_default() += 1;
        }
    }
    // Folded BatchNorm → the layer that now produces its value.
    let mut alias: HashMap<String, String> = HashMap::new();
    let mut removed = vec![false; def.nodes.len()];
    // Tensor keys this pass created (not shared with anything, so they may be replaced).
    let mut fresh: BTreeSet<String> = BTreeSet::new();
    // Keys that folded nodes stopped using; removed at the end unless still referenced.
    let mut dropped: BTreeSet<String> = BTreeSet::new();
    let mut report = Vec::new();

    for &i in &order {
        let Op::BatchNorm { epsilon } = def.nodes[i].op else {
            continue;
        };
        let src = resolve(&alias, &def.nodes[i].inputs[0]);
        let Some(&p) = by_name.get(&src) else {
            continue; // the graph input
        };
        if !matches!(def.nodes[p].op, Op::Conv { .. } | Op::Dense) {
            continue;
        }
        if readers.get(&src).copied().unwrap_or(0) != 1 || def.output == src {
            continue;
        }
        let bn = def.nodes[i].clone();
        let layer = def.nodes[p].clone();
        let bn_param = |name: &str| -> ArrayViewD<'_, f32> {
            weights
                .get(&bn.params[name])
                .expect("validated graph: BatchNorm parameters exist")
        };
        let w = weights
            .get(&layer.params["weight"])
            .expect("validated graph: weight exists");
        let b = layer.params.get("bias").and_then(|k| weights.get(k));
        let (w_new, b_new) = fold(
            w,
            b,
            bn_param("scale"),
            bn_param("bias"),
            bn_param("mean"),
            bn_param("var"),
            epsilon,
        )
        .map_err(|m| IrError::node(&bn.name, bn.op.kind(), m))?;

        for (param, value) in [("weight", w_new), ("bias", b_new)] {
            let key = match layer.params.get(param) {
                Some(old) if fresh.contains(old) => old.clone(),
                old => {
                    if let Some(old) = old {
                        dropped.insert(old.clone());
                    }
                    let key = unique_key(&weights, &format!("{}.{param}.folded", layer.name));
                    fresh.insert(key.clone());
                    key
                }
            };
            weights.insert(key.clone(), value);
            def.nodes[p].params.insert(param.to_owned(), key);
        }
        dropped.extend(bn.params.values().cloned());

        let bn_readers = readers.get(&bn.name).copied().unwrap_or(0);
        readers.insert(src.clone(), bn_readers);
        if def.output == bn.name {
            def.output = src.clone();
        }
        alias.insert(bn.name.clone(), src.clone());
        removed[i] = true;
        report.push(FoldedBatchNorm {
            batchnorm: bn.name,
            into: src,
        });
    }

    if report.is_empty() {
        return Ok((Graph::new(def, weights)?, report));
    }
    let mut keep = removed.iter().map(|r| !r);
    def.nodes
        .retain(|_| keep.next().expect("one flag per node"));
    for n in &mut def.nodes {
        for src in &mut n.inputs {
            if alias.contains_key(src.as_str()) {
                *src = resolve(&alias, src);
            }
        }
    }
    let used: BTreeSet<&String> = def.nodes.iter().flat_map(|n| n.params.values()).collect();
    for key in dropped.iter().filter(|k| !used.contains(k)) {
        weights.remove(key);
    }
    Ok((Graph::new(def, weights)?, report))
}

/// Removes a trailing Softmax: if the graph output is a Softmax node whose input is another node,
/// that node becomes the output and the Softmax is removed (kept, but no longer the output, where
/// other nodes read it). Returns whether the graph changed.
pub fn strip_softmax(graph: Graph) -> Result<(Graph, bool), IrError> {
    let out = graph.output_id();
    let node = &graph.nodes()[out];
    if !matches!(node.op, Op::Softmax { .. }) || graph.node_id(&node.inputs[0]).is_none() {
        return Ok((graph, false));
    }
    let src = node.inputs[0].clone();
    let name = node.name.clone();
    let still_read = !graph.consumers(out).is_empty();
    let (mut def, weights) = graph.into_parts();
    def.output = src;
    if !still_read {
        def.nodes.retain(|n| n.name != name);
    }
    Ok((Graph::new(def, weights)?, true))
}

fn resolve(alias: &HashMap<String, String>, name: &str) -> String {
    let mut cur = name;
    while let Some(next) = alias.get(cur) {
        cur = next;
    }
    cur.to_owned()
}

fn unique_key(weights: &Weights, base: &str) -> String {
    if weights.get(base).is_none() {
        return base.to_owned();
    }
    (2..)
        .map(|k| format!("{base}.{k}"))
        .find(|k| weights.get(k).is_none())
        .expect("some suffix is free")
}

/// The folded weight and bias (see [`fold_batchnorm`]).
fn fold(
    w: ArrayViewD<'_, f32>,
    b: Option<ArrayViewD<'_, f32>>,
    scale: ArrayViewD<'_, f32>,
    shift: ArrayViewD<'_, f32>,
    mean: ArrayViewD<'_, f32>,
    var: ArrayViewD<'_, f32>,
    epsilon: f32,
) -> Result<(ArrayD<f32>, ArrayD<f32>), String> {
    let channels = w.shape()[0];
    let at =
        |a: &ArrayViewD<'_, f32>, o: usize| f64::from(a.as_slice_memory_order().expect("1-D")[o]);
    let mut factor = Vec::with_capacity(channels);
    for o in 0..channels {
        let d = at(&var, o) + f64::from(epsilon);
        if d.is_nan() || d <= 0.0 {
            return Err(format!(
                "cannot fold: var + epsilon = {d} is not positive in channel {o}"
            ));
        }
        factor.push(at(&scale, o) / d.sqrt());
    }
    let mut w_new = w.to_owned();
    for (o, mut row) in w_new.axis_iter_mut(Axis(0)).enumerate() {
        row.mapv_inplace(|v| (f64::from(v) * factor[o]) as f32);
    }
    let b_new = ArrayD::from_shape_fn(vec![channels], |ix| {
        let o = ix[0];
        let b = b.as_ref().map_or(0.0, |b| at(b, o));
        ((b - at(&mean, o)) * factor[o] + at(&shift, o)) as f32
    });
    Ok((w_new, b_new))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ndarray::IxDyn;

    use super::*;
    use crate::graph::{FORMAT_VERSION, GraphDef, InputDef, Layout, NodeDef};

    fn node(name: &str, op: Op, inputs: &[&str], params: &[(&str, &str)]) -> NodeDef {
        NodeDef {
            name: name.into(),
            op,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn conv1x1() -> Op {
        Op::Conv {
            kernel: [1, 1],
            strides: [1, 1],
            pads: [0; 4],
            dilations: [1, 1],
            groups: 1,
        }
    }

    fn bn(name: &str, input: &str, prefix: &str) -> NodeDef {
        node(
            name,
            Op::BatchNorm { epsilon: 1.0 },
            &[input],
            &[
                ("scale", &format!("{prefix}.scale")),
                ("bias", &format!("{prefix}.bias")),
                ("mean", &format!("{prefix}.mean")),
                ("var", &format!("{prefix}.var")),
            ],
        )
    }

    fn t(shape: &[usize], v: &[f32]) -> ArrayD<f32> {
        ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap()
    }

    /// BN stats with √(var + 1) = [2, 1] and scale [2, 0.5]: a = [1, 0.5].
    fn bn_weights(w: &mut Weights, prefix: &str) {
        w.insert(format!("{prefix}.scale"), t(&[2], &[2.0, 0.5]));
        w.insert(format!("{prefix}.bias"), t(&[2], &[0.1, 0.2]));
        w.insert(format!("{prefix}.mean"), t(&[2], &[1.0, 2.0]));
        w.insert(format!("{prefix}.var"), t(&[2], &[3.0, 0.0]));
    }

    fn graph(input: &[usize], output: &str, nodes: Vec<NodeDef>, weights: Weights) -> Graph {
        let def = GraphDef {
            format: FORMAT_VERSION,
            name: "t".into(),
            weights: "t.safetensors".into(),
            input: InputDef {
                name: "x".into(),
                shape: input.to_vec(),
                layout: if input.len() == 3 {
                    Layout::NCHW
                } else {
                    Layout::Other
                },
                preprocess: None,
            },
            output: output.into(),
            nodes,
            labels: None,
        };
        Graph::new(def, weights).unwrap()
    }

    fn names(g: &Graph) -> Vec<&str> {
        g.nodes().iter().map(|n| n.name.as_str()).collect()
    }

    fn param<'a>(g: &'a Graph, node: &str, p: &str) -> ArrayViewD<'a, f32> {
        g.param(g.node_id(node).unwrap(), p).unwrap()
    }

    #[test]
    fn dense_bn_at_output_hand_values() {
        let mut w = Weights::new();
        w.insert("fc.w", t(&[2, 2], &[1.0, 2.0, 3.0, 4.0]));
        w.insert("fc.b", t(&[2], &[1.0, -1.0]));
        bn_weights(&mut w, "bn");
        let g = graph(
            &[2],
            "bn",
            vec![
                node(
                    "fc",
                    Op::Dense,
                    &["x"],
                    &[("weight", "fc.w"), ("bias", "fc.b")],
                ),
                bn("bn", "fc", "bn"),
            ],
            w,
        );
        let (g, report) = fold_batchnorm_with_report(g).unwrap();
        assert_eq!(names(&g), ["fc"]);
        assert_eq!(g.def().output, "fc");
        assert_eq!(
            report,
            [FoldedBatchNorm {
                batchnorm: "bn".into(),
                into: "fc".into()
            }]
        );
        // W' = [[1, 2], [1.5, 2]], b' = [(1 − 1)·1 + 0.1, (−1 − 2)·0.5 + 0.2].
        assert_eq!(param(&g, "fc", "weight"), t(&[2, 2], &[1.0, 2.0, 1.5, 2.0]));
        assert_eq!(param(&g, "fc", "bias"), t(&[2], &[0.1, -1.3]));
        assert_eq!(g.nodes()[0].params["weight"], "fc.weight.folded");
        assert_eq!(g.nodes()[0].params["bias"], "fc.bias.folded");
        // Nothing refers to the old tensors any more.
        let keys: Vec<&str> = g.weights().iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["fc.bias.folded", "fc.weight.folded"]);
    }

    #[test]
    fn conv_bn_relu_without_bias() {
        let mut w = Weights::new();
        w.insert("c.w", t(&[2, 1, 1, 1], &[2.0, 3.0]));
        bn_weights(&mut w, "bn");
        let g = graph(
            &[1, 2, 2],
            "relu",
            vec![
                node("c", conv1x1(), &["x"], &[("weight", "c.w")]),
                bn("bn", "c", "bn"),
                node("relu", Op::Relu, &["bn"], &[]),
            ],
            w,
        );
        let g = fold_batchnorm(g).unwrap();
        assert_eq!(names(&g), ["c", "relu"]);
        assert_eq!(g.nodes()[1].inputs, ["c"]);
        assert_eq!(param(&g, "c", "weight"), t(&[2, 1, 1, 1], &[2.0, 1.5]));
        // b' = (0 − mean)·a + β.
        assert_eq!(param(&g, "c", "bias"), t(&[2], &[-0.9, -0.8]));
    }

    #[test]
    fn shared_weights_are_not_altered() {
        // Two convolutions share one weight tensor; only one is followed by a BatchNorm.
        let mut w = Weights::new();
        w.insert("shared", t(&[2, 2, 1, 1], &[1.0, 2.0, 3.0, 4.0]));
        bn_weights(&mut w, "bn");
        let g = graph(
            &[2, 1, 1],
            "add",
            vec![
                node("a", conv1x1(), &["x"], &[("weight", "shared")]),
                node("b", conv1x1(), &["x"], &[("weight", "shared")]),
                bn("bn", "a", "bn"),
                node("add", Op::Add, &["bn", "b"], &[]),
            ],
            w,
        );
        let g = fold_batchnorm(g).unwrap();
        assert_eq!(names(&g), ["a", "b", "add"]);
        assert_eq!(g.nodes()[2].inputs, ["a", "b"]);
        assert_eq!(
            param(&g, "b", "weight"),
            t(&[2, 2, 1, 1], &[1.0, 2.0, 3.0, 4.0])
        );
        assert_eq!(g.weights().get("shared").unwrap(), param(&g, "b", "weight"));
        assert_eq!(
            param(&g, "a", "weight"),
            t(&[2, 2, 1, 1], &[1.0, 2.0, 1.5, 2.0])
        );
        assert!(g.weights().get("bn.mean").is_none());
    }

    #[test]
    fn unfoldable_batchnorms_stay() {
        let mut w = Weights::new();
        w.insert("c.w", t(&[2, 2, 1, 1], &[1.0, 2.0, 3.0, 4.0]));
        for p in ["bn1", "bn2", "bn3", "bn4"] {
            bn_weights(&mut w, p);
        }
        let nodes = vec![
            // On the graph input.
            bn("bn1", "x", "bn1"),
            node("c", conv1x1(), &["bn1"], &[("weight", "c.w")]),
            // The conv's output is also read by the Add.
            bn("bn2", "c", "bn2"),
            node("add", Op::Add, &["bn2", "c"], &[]),
            // After a ReLU.
            node("relu", Op::Relu, &["add"], &[]),
            bn("bn3", "relu", "bn3"),
        ];
        let g = graph(&[2, 3, 3], "bn3", nodes.clone(), w.clone());
        let before = g.def().clone();
        let g = fold_batchnorm(g).unwrap();
        assert_eq!(g.def(), &before);
        assert_eq!(g.weights(), &w);

        // A conv that is the graph output keeps the BatchNorm that reads it.
        let nodes = vec![
            node("c", conv1x1(), &["x"], &[("weight", "c.w")]),
            bn("bn4", "c", "bn4"),
        ];
        let g = graph(&[2, 3, 3], "c", nodes, w);
        let (g, report) = fold_batchnorm_with_report(g).unwrap();
        assert!(report.is_empty());
        assert_eq!(names(&g), ["c", "bn4"]);
    }

    #[test]
    fn chained_batchnorms_fold_into_one_layer() {
        let mut w = Weights::new();
        w.insert("fc.w", t(&[2, 2], &[1.0, 2.0, 3.0, 4.0]));
        bn_weights(&mut w, "bn1");
        bn_weights(&mut w, "bn2");
        let g = graph(
            &[2],
            "out",
            vec![
                node("fc", Op::Dense, &["x"], &[("weight", "fc.w")]),
                bn("bn1", "fc", "bn1"),
                bn("bn2", "bn1", "bn2"),
                node("out", Op::Identity, &["bn2"], &[]),
            ],
            w,
        );
        let (g, report) = fold_batchnorm_with_report(g).unwrap();
        assert_eq!(names(&g), ["fc", "out"]);
        assert_eq!(g.nodes()[1].inputs, ["fc"]);
        assert_eq!(report.len(), 2);
        // Twice a = [1, 0.5]: rows scaled by [1, 0.25].
        assert_eq!(
            param(&g, "fc", "weight"),
            t(&[2, 2], &[1.0, 2.0, 0.75, 1.0])
        );
        // b1 = [−0.9, −0.8]; b2 = (b1 − mean)·a + β = [−1.9 + 0.1, −1.4 + 0.2].
        let b = param(&g, "fc", "bias");
        assert!(
            (b[[0]] + 1.8).abs() < 1e-6 && (b[[1]] + 1.2).abs() < 1e-6,
            "{b}"
        );
        let keys: Vec<&str> = g.weights().iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["fc.bias.folded", "fc.weight.folded"]);
    }

    #[test]
    fn nonpositive_variance_is_an_error() {
        let mut w = Weights::new();
        w.insert("fc.w", t(&[2, 2], &[1.0, 2.0, 3.0, 4.0]));
        bn_weights(&mut w, "bn");
        w.insert("bn.var", t(&[2], &[3.0, -1.0]));
        let g = graph(
            &[2],
            "bn",
            vec![
                node("fc", Op::Dense, &["x"], &[("weight", "fc.w")]),
                bn("bn", "fc", "bn"),
            ],
            w,
        );
        let e = fold_batchnorm(g).unwrap_err().to_string();
        assert!(
            e.contains("node 'bn' (BatchNorm)") && e.contains("channel 1"),
            "{e}"
        );
    }

    #[test]
    fn softmax_stripped() {
        let mut w = Weights::new();
        w.insert("fc.w", t(&[3, 2], &[1.0; 6]));
        let nodes = vec![
            node("fc", Op::Dense, &["x"], &[("weight", "fc.w")]),
            node("prob", Op::Softmax { axis: 1 }, &["fc"], &[]),
        ];
        let g = graph(&[2], "prob", nodes.clone(), w.clone());
        let (g, done) = strip_softmax(g).unwrap();
        assert!(done);
        assert_eq!(names(&g), ["fc"]);
        assert_eq!(g.def().output, "fc");
        let (g, done) = strip_softmax(g).unwrap();
        assert!(!done);
        assert_eq!(names(&g), ["fc"]);

        // A Softmax that another node also reads stays, but is no longer the output.
        let mut nodes2 = nodes.clone();
        nodes2.push(node("id", Op::Identity, &["prob"], &[]));
        let g = graph(&[2], "prob", nodes2, w.clone());
        let (g, done) = strip_softmax(g).unwrap();
        assert!(done);
        assert_eq!(names(&g), ["fc", "prob", "id"]);
        assert_eq!(g.def().output, "fc");

        // A Softmax straight on the input cannot go.
        let g = graph(
            &[2],
            "prob",
            vec![node("prob", Op::Softmax { axis: 1 }, &["x"], &[])],
            Weights::new(),
        );
        assert!(!strip_softmax(g).unwrap().1);
    }
}
