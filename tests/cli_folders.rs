//! `explain --input DIR`: streaming a folder tree, bad inputs inside it, shards (including the
//! commands of docs/cluster.md), --resume, Ctrl-C, rendering options and the HTML gallery.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

/// The bundled MNIST graph converted into `dir` (pixels scaled to [0, 1], labels).
fn mnist(dir: &Path) -> PathBuf {
    let ron = dir.join("mnist.ron");
    let r = root();
    let o = lrp(&[
        "convert",
        r.join("graphs/mnist/mnist_cnn.onnx").to_str().unwrap(),
        "-o",
        ron.to_str().unwrap(),
        "--preprocess",
        "scale=1/255",
        "--labels",
        r.join("graphs/mnist/labels.txt").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    ron
}

/// A folder tree of `copies` × 10 bundled example images: `set{k}/` and `set{k}/deep/`.
fn image_tree(dir: &Path, copies: usize) -> PathBuf {
    let src = root().join("graphs/mnist/examples");
    let data = dir.join("data");
    let mut names: Vec<_> = std::fs::read_dir(&src)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".png"))
        .collect();
    names.sort();
    for k in 0..copies {
        for (i, n) in names.iter().enumerate() {
            let sub = if i % 2 == 0 {
                data.join(format!("set{k}"))
            } else {
                data.join(format!("set{k}/deep"))
            };
            std::fs::create_dir_all(&sub).unwrap();
            std::fs::copy(src.join(n), sub.join(n)).unwrap();
        }
    }
    data
}

/// Every file under `dir`, relative, `/`-separated, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                pending.push(e.path());
            } else {
                let rel = e.path().strip_prefix(dir).unwrap().to_path_buf();
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.sort();
    out
}

/// The manifest records of every `manifest*.jsonl` in `dir`, by source (the last record of a
/// source wins; a line cut short by a crash is left out).
fn records(dir: &Path) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    for f in tree(dir).iter().filter(|f| f.starts_with("manifest")) {
        for line in std::fs::read_to_string(dir.join(f)).unwrap().lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                out.insert(v["source"].as_str().unwrap().to_string(), v);
            }
        }
    }
    out
}

/// A temporary folder (kept alive by `_dir`) with the MNIST graph `g`, a tree `data` of
/// `copies` × 10 images and an output folder `out` not yet made.
struct Setup {
    _dir: tempfile::TempDir,
    g: PathBuf,
    data: PathBuf,
    out: PathBuf,
}

fn setup(copies: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let g = mnist(dir.path());
    let data = image_tree(dir.path(), copies);
    let out = dir.path().join("out");
    Setup {
        _dir: dir,
        g,
        data,
        out,
    }
}

/// `explain`, which must succeed.
fn explain_ok(graph: &Path, input: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let o = explain(graph, input, out, extra);
    assert!(o.status.success(), "{}", stderr(&o));
    o
}

fn explain(graph: &Path, input: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "explain",
        graph.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--low",
        "0",
        "--high",
        "1",
    ];
    args.extend_from_slice(extra);
    lrp(&args)
}

#[test]
fn a_folder_tree_is_mirrored_and_recorded() {
    let Setup { _dir, g, data, out } = setup(1);
    let o = explain_ok(
        &g,
        &data,
        &out,
        &[
            "--batch-size",
            "3",
            "--progress",
            "lines",
            "--keep",
            "/conv1/*",
        ],
    );
    let files = tree(&out);
    // The kept node's relevance per input: [maps, ...node shape] (SGLRP: target, dual).
    let kept = read_npy(&out.join("nodes/_conv1_Conv/set0/deep/digit_5.npy"));
    assert_eq!(kept.shape()[0], 2);
    for f in tree(&data) {
        let stem = f.trim_end_matches(".png");
        assert!(files.contains(&format!("{stem}.png")), "{f}: {files:?}");
        assert!(files.contains(&format!("{stem}.npy")), "{f}");
    }
    assert!(files.contains(&"manifest.jsonl".to_string()));
    // Plain progress lines on stderr (not a terminal), one per batch of 3.
    assert_eq!(stderr(&o).matches("explain: ").count(), 4, "{}", stderr(&o));
    let recs = records(&out);
    assert_eq!(recs.len(), 10);
    let r = &recs["set0/deep/digit_5.png"];
    assert_eq!(r["status"], "ok");
    assert_eq!(r["target"], 5);
    assert_eq!(r["target_label"], "five");
    assert_eq!(r["methods"]["sglrp"]["heatmap"], "set0/deep/digit_5.png");
    assert_eq!(r["top5"].as_array().unwrap().len(), 5);
    assert!(r["timings"]["explain_seconds"].as_f64().unwrap() > 0.0);
    // The per-input relevance is one sample: [C, H, W].
    let rel = read_npy(&out.join("set0/deep/digit_5.npy"));
    assert_eq!(rel.shape(), &[1, 28, 56]);
}

#[test]
fn bad_images_are_reported_and_the_rest_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let g = mnist(dir.path());
    let data = image_tree(dir.path(), 1);
    std::fs::write(
        data.join("set0/corrupt.png"),
        b"\x89PNG\r\n\x1a\nnot really",
    )
    .unwrap();
    // 20 × 20 pixels: smaller than the 28 × 56 that fit=crop cuts out.
    let small: Vec<u8> = vec![128; 20 * 20 * 3];
    lrp_io::write_png_rgb(&data.join("set0/deep/small.png"), 20, 20, &small).unwrap();
    let out = dir.path().join("out");
    let o = explain(
        &g,
        &data,
        &out,
        &["--preprocess", "scale=1/255,fit=crop", "--batch-size", "4"],
    );
    assert_fails(
        &o,
        1,
        &["2 of 12 input(s) could not be explained", "manifest.jsonl"],
    );
    let err = stderr(&o);
    assert!(
        err.contains("failed: ") && err.contains("corrupt.png"),
        "{err}"
    );
    assert!(
        err.contains("small.png") && err.contains("fit=shorter"),
        "{err}"
    );
    let recs = records(&out);
    assert_eq!(recs.len(), 12);
    assert_eq!(recs["set0/corrupt.png"]["status"], "error");
    assert!(
        recs["set0/deep/small.png"]["error"]
            .as_str()
            .unwrap()
            .contains("smaller")
    );
    assert_eq!(recs.values().filter(|r| r["status"] == "ok").count(), 10);
    assert!(out.join("set0/digit_3.png").is_file());
    assert!(!out.join("set0/corrupt.png").exists());
}

/// Compares two output folders: the same files, and relevance equal to f32 rounding.
fn assert_same_outputs(a: &Path, b: &Path) {
    let fa: Vec<String> = tree(a)
        .into_iter()
        .filter(|f| !f.starts_with("manifest"))
        .collect();
    let fb: Vec<String> = tree(b)
        .into_iter()
        .filter(|f| !f.starts_with("manifest"))
        .collect();
    assert_eq!(fa, fb);
    for f in fa.iter().filter(|f| f.ends_with(".npy")) {
        let (x, y) = (read_npy(&a.join(f)), read_npy(&b.join(f)));
        let (d, m) = max_diff(&x, &y);
        assert!(d <= 1e-5 * m.max(1e-30), "{f}: {d} vs max {m}");
    }
    let (ra, rb) = (records(a), records(b));
    assert_eq!(ra.keys().collect::<Vec<_>>(), rb.keys().collect::<Vec<_>>());
    for (k, r) in &ra {
        assert_eq!(r["target"], rb[k]["target"], "{k}");
        assert_eq!(r["methods"], {
            let mut m = rb[k]["methods"].clone();
            // Sums may differ in the last bits between batchings.
            for (name, v) in m.as_object_mut().unwrap() {
                v["relevance_sum"] = r["methods"][name]["relevance_sum"].clone();
                v["conservation_gap"] = r["methods"][name]["conservation_gap"].clone();
            }
            m
        });
    }
}

#[test]
fn shards_add_up_to_the_unsharded_run() {
    let dir = tempfile::tempdir().unwrap();
    let g = mnist(dir.path());
    let data = image_tree(dir.path(), 2);
    let whole = dir.path().join("whole");
    explain_ok(&g, &data, &whole, &["--batch-size", "5"]);
    let sharded = dir.path().join("sharded");
    let mut counts = Vec::new();
    for k in 0..3 {
        let shard = format!("{k}/3");
        explain_ok(
            &g,
            &data,
            &sharded,
            &["--batch-size", "5", "--shard", &shard],
        );
        counts.push(records(&sharded).len());
    }
    // Every shard did some, together all of it, each into its own manifest.
    assert!(counts[0] > 0 && counts[1] > counts[0] && counts[2] > counts[1]);
    assert_eq!(counts[2], 20);
    for k in 0..3 {
        assert!(sharded.join(format!("manifest-{k}-of-3.jsonl")).is_file());
    }
    assert_same_outputs(&whole, &sharded);
    for bad in ["3/3", "1", "x/2"] {
        let o = explain(&g, &data, &sharded, &["--shard", bad]);
        assert_fails(&o, 2, &["--shard"]);
    }
}

/// The Slurm and Kubernetes command lines of docs/cluster.md, run shard by shard.
#[test]
fn docs_cluster_commands_split_a_folder() {
    let text = std::fs::read_to_string(root().join("docs/cluster.md")).unwrap();
    let commands: Vec<&str> = text
        .lines()
        .map(|l| l.trim().trim_start_matches("- "))
        .filter(|l| l.starts_with("lrp-graph explain ") && l.contains("--shard $"))
        .collect();
    assert_eq!(commands.len(), 2, "the Slurm and the Kubernetes command");
    let dir = tempfile::tempdir().unwrap();
    let g = mnist(dir.path());
    let data = image_tree(dir.path(), 1);
    let whole = dir.path().join("whole");
    explain_ok(&g, &data, &whole, &["--batch-size", "16"]);
    for (c, cmd) in commands.iter().enumerate() {
        let out = dir.path().join(format!("cluster{c}"));
        let n = 4;
        for k in 0..n {
            let vars = [
                ("$GRAPH", g.to_str().unwrap().to_string()),
                ("/models/vgg16.ron", g.to_str().unwrap().to_string()),
                ("$DATA", data.to_str().unwrap().to_string()),
                ("/data/imagenet-val", data.to_str().unwrap().to_string()),
                ("$OUT", out.to_str().unwrap().to_string()),
                ("/out/lrp-vgg16", out.to_str().unwrap().to_string()),
                ("$SLURM_CPUS_PER_TASK", "1".into()),
                ("$SLURM_ARRAY_TASK_ID", k.to_string()),
                ("$SLURM_ARRAY_TASK_COUNT", n.to_string()),
                ("$JOB_COMPLETION_INDEX", k.to_string()),
                ("$SHARDS", n.to_string()),
            ];
            let args: Vec<String> = cmd
                .split_whitespace()
                .skip(1)
                .map(|w| {
                    let mut w = w.to_string();
                    for (var, val) in &vars {
                        w = w.replace(var, val);
                    }
                    w
                })
                .chain(["--low", "0", "--high", "1"].map(String::from))
                .collect();
            assert!(!args.iter().any(|a| a.contains('$')), "{args:?}");
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let o = lrp(&args);
            assert!(o.status.success(), "{cmd}: {}", stderr(&o));
        }
        assert_same_outputs(&whole, &out);
    }
}

#[test]
fn resume_skips_what_is_done_and_redoes_what_is_missing() {
    let Setup { _dir, g, data, out } = setup(1);
    explain_ok(&g, &data, &out, &["--batch-size", "4"]);
    // An output deleted, and the manifest's last line cut short as by a crash.
    std::fs::remove_file(out.join("set0/digit_3.png")).unwrap();
    let manifest = out.join("manifest.jsonl");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let cut = text.trim_end().rfind('\n').unwrap() + 20;
    std::fs::write(&manifest, &text[..cut]).unwrap();
    std::fs::write(out.join("set0/.lrp-tmp-leftover"), b"half").unwrap();
    let o = explain_ok(&g, &data, &out, &["--batch-size", "4", "--resume"]);
    assert!(
        stdout(&o).contains("explained 2 of 10 input(s), 8 already done"),
        "{}",
        stdout(&o)
    );
    assert!(out.join("set0/digit_3.png").is_file());
    assert!(!out.join("set0/.lrp-tmp-leftover").exists());
    let recs = records(&out);
    assert_eq!(recs.len(), 10);
    assert!(recs.values().all(|r| r["status"] == "ok"));
    // The cut line stays alone on its line: every other line is a record.
    let text = std::fs::read_to_string(&manifest).unwrap();
    let broken = text
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_err())
        .count();
    assert_eq!(broken, 1, "{text}");
    // Nothing left to do.
    let o = explain(&g, &data, &out, &["--resume"]);
    assert!(stdout(&o).contains("explained 0 of 10 input(s), 10 already done"));
    // --resume and --shard need a folder.
    let npy = root().join("graphs/mnist/examples/examples.npy");
    assert_fails(&explain(&g, &npy, &out, &["--resume"]), 2, &["folder"]);
}

/// Ctrl-C stops after the current batch with exit code 130 and complete files only;
/// --resume finishes the job.
#[test]
fn ctrl_c_leaves_complete_files_and_resume_finishes() {
    let Setup { _dir, g, data, out } = setup(3);
    let mut child = Command::new(env!("CARGO_BIN_EXE_lrp-graph"))
        .args([
            "explain",
            g.to_str().unwrap(),
            "--input",
            data.to_str().unwrap(),
        ])
        .args(["--out", out.to_str().unwrap(), "--low", "0", "--high", "1"])
        .args(["--batch-size", "1", "--progress", "lines", "--overlay"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // After the first batch, Ctrl-C.
    loop {
        let line = lines.next().expect("progress").unwrap();
        if line.starts_with("explain: ") {
            break;
        }
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("interrupted after")),
        "{rest:?}"
    );
    let files = tree(&out);
    assert!(files.iter().all(|f| !f.contains(".lrp-tmp")), "{files:?}");
    let done = records(&out).len();
    assert!(done < 30, "stopped early: {done}");
    for f in files.iter().filter(|f| f.ends_with(".png")) {
        image::open(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    }
    explain_ok(&g, &data, &out, &["--resume", "--overlay"]);
    assert_eq!(records(&out).len(), 30);
}

#[test]
fn rendering_options_and_grid() {
    let Setup { _dir, g, data, out } = setup(1);
    explain_ok(
        &g,
        &data,
        &out,
        &[
            "--method",
            "sglrp,lrp",
            "--cmap",
            "coldnhot",
            "--norm",
            "absolute",
            "--clip",
            "99",
            "--reduce",
            "l2",
            "--overlay",
            "0.5",
            "--grid",
            "3",
            "--zoom",
            "2",
            "--batch-size",
            "6",
        ],
    );
    let files = tree(&out);
    for m in ["sglrp", "lrp"] {
        assert!(files.contains(&format!("{m}/set0/digit_3.png")));
        assert!(files.contains(&format!("{m}/set0/digit_3.overlay.png")));
        assert!(files.contains(&format!("{m}/grid-000000.png")), "{files:?}");
        assert!(files.contains(&format!("{m}/grid-000006.png")));
    }
    let heat = image::open(out.join("sglrp/set0/digit_3.png"))
        .unwrap()
        .to_rgb8();
    assert_eq!(heat.dimensions(), (112, 56), "28 × 56 zoomed ×2");
    let r = records(&out);
    assert_eq!(
        r["set0/digit_3.png"]["methods"]["lrp"]["overlay"],
        "lrp/set0/digit_3.overlay.png"
    );
    for bad in [
        vec!["--cmap", "rainbow"],
        vec!["--norm", "loud"],
        vec!["--clip", "0"],
        vec!["--overlay", "1.5"],
        vec!["--method", "sglrp,sglrp"],
    ] {
        let o = explain(&g, &data, &out, &bad);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(bad[0]) || stderr(&o).contains(bad[1]),
            "{}",
            stderr(&o)
        );
    }
}

/// The gallery opens in a headless browser from the file system; skipped where no Chromium
/// is installed.
#[test]
fn html_gallery_renders_in_a_browser() {
    let Setup {
        _dir: dir,
        g,
        data,
        out,
    } = setup(1);
    explain_ok(
        &g,
        &data,
        &out,
        &["--method", "sglrp,clrp", "--html", "--overlay"],
    );
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    // Every image the page shows exists, relative to the page.
    let mut shown = 0;
    for part in html.split("src=\"").skip(1) {
        let src = &part[..part.find('"').unwrap()];
        assert!(out.join(src).is_file(), "{src}");
        shown += 1;
    }
    assert_eq!(
        shown,
        10 * (1 + 2 * 2),
        "input + 2 methods × (heatmap, overlay)"
    );
    assert!(html.contains("<th>sglrp</th><th>clrp</th>"));
    let Some(browser) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
    else {
        eprintln!("skipped: no Chromium found (apt install chromium) to render index.html");
        return;
    };
    let shot = dir.path().join("shot.png");
    let url = format!("file://{}", out.join("index.html").display());
    let o = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .arg(format!("--screenshot={}", shot.display()))
        .args(["--window-size=1000,700", &url])
        .output()
        .unwrap();
    assert!(shot.is_file(), "{}", String::from_utf8_lossy(&o.stderr));
    let img = image::open(&shot).unwrap().to_rgb8();
    // The heatmaps are drawn: saturated red or blue pixels on the page.
    let coloured = img
        .pixels()
        .filter(|p| {
            let [r, g, b] = p.0;
            (r > 180 && g < 90 && b < 90) || (b > 180 && r < 90 && g < 90)
        })
        .count();
    assert!(coloured > 500, "{coloured} coloured pixels");
    let o = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--dump-dom",
            &url,
        ])
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&o.stdout);
    assert_eq!(dom.matches("<tr>").count(), 11, "header + 10 inputs");
}

/// A folder for a graph whose input is not an image is bad usage, found before any work.
#[test]
fn a_folder_needs_an_image_input() {
    let dir = tempfile::tempdir().unwrap();
    let ron = dir.path().join("mlp.ron");
    let o = lrp(&[
        "convert",
        fixture("mlp.onnx").to_str().unwrap(),
        "-o",
        ron.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let data = image_tree(dir.path(), 1);
    let out = dir.path().join("out");
    let o = lrp(&[
        "explain",
        ron.to_str().unwrap(),
        "--input",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_fails(&o, 2, &["--input", "data"]);
    assert!(!out.join("manifest.jsonl").exists());
}

/// Output names keep dots inside file names, and files that differ only in their extension
/// keep it, so no output overwrites another.
#[test]
fn output_names_never_collide() {
    let dir = tempfile::tempdir().unwrap();
    let g = mnist(dir.path());
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let src = root().join("graphs/mnist/examples/digit_3.png");
    std::fs::copy(&src, data.join("scan.2024.png")).unwrap();
    std::fs::copy(&src, data.join("dup.png")).unwrap();
    image::open(&src)
        .unwrap()
        .to_rgb8()
        .save(data.join("dup.jpg"))
        .unwrap();
    let out = dir.path().join("out");
    explain_ok(&g, &data, &out, &[]);
    let files = tree(&out);
    for f in [
        "scan.2024.png",
        "scan.2024.npy",
        "dup.png.png",
        "dup.png.npy",
        "dup.jpg.png",
        "dup.jpg.npy",
    ] {
        assert!(files.contains(&f.to_string()), "{f}: {files:?}");
    }
}
