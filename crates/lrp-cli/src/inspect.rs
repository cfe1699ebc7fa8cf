//! `lrp-graph inspect`.

use anyhow::Result;
use lrp_ir::Graph;

use crate::args::InspectArgs;

pub fn run(a: InspectArgs, registry: &lrp_rules::Registry) -> Result<()> {
    let graph = Graph::load(&a.graph)?;
    if a.method.is_none() && a.rules.is_none() {
        print!("{}", describe(&graph));
        return Ok(());
    }
    let config = crate::explain::load_config(a.method.as_deref(), a.rules.as_deref(), registry)?;
    let (canonical, _) = lrp_engine::canonicalize(graph, &config)?;
    let assignment = config.assign(&canonical, registry)?;
    println!("method {} signal {:?}", config.name, config.signal);
    print!("{}", assignment.describe(&canonical));
    Ok(())
}

fn dims(per_sample: &[usize]) -> String {
    let mut s = String::from("[N");
    for d in per_sample {
        s.push_str(&format!(", {d}"));
    }
    s.push(']');
    s
}

/// A stable, human-readable description of a graph: header, then one line per node in
/// topological order.
pub fn describe(g: &Graph) -> String {
    let d = g.def();
    let input = g.input();
    let mut out = String::new();
    out.push_str(&format!("graph {} (format {})\n", d.name, d.format));
    out.push_str(&format!(
        "input {} {} {:?}\n",
        input.name,
        dims(&input.shape),
        input.layout
    ));
    match &input.preprocess {
        Some(p) => out.push_str(&format!(
            "preprocess {:?} scale {} mean {:?} std {:?}{}\n",
            p.order,
            p.scale,
            p.mean,
            p.std,
            p.resize
                .map(|[h, w]| format!(" resize {h}x{w}"))
                .unwrap_or_default()
        )),
        None => out.push_str("preprocess none recorded\n"),
    }
    let out_id = g.output_id();
    out.push_str(&format!(
        "output {} {}{}\n",
        d.output,
        dims(g.shape(out_id)),
        g.labels()
            .map(|l| format!(" ({} labels)", l.len()))
            .unwrap_or_default()
    ));
    let params: usize = g.weights().iter().map(|(_, t)| t.len()).sum();
    out.push_str(&format!(
        "weights {} ({} tensors, {params} values)\n",
        d.weights,
        g.weights().len()
    ));
    let rows: Vec<[String; 4]> = g
        .topo_order()
        .iter()
        .map(|&i| {
            let n = &g.nodes()[i];
            [
                n.name.clone(),
                n.op.to_string(),
                n.inputs.join(", "),
                dims(g.shape(i)),
            ]
        })
        .collect();
    let header = ["node", "op", "inputs", "output"];
    let width: Vec<usize> = (0..4)
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: [&str; 4]| {
        let mut s = String::new();
        for (c, cell) in cells.iter().enumerate() {
            if c < 3 {
                s.push_str(&format!("{cell:<w$}  ", w = width[c]));
            } else {
                s.push_str(cell);
            }
        }
        s.push('\n');
        s
    };
    out.push('\n');
    out.push_str(&line(header));
    for r in &rows {
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3]]));
    }
    out
}
