//! `explain --html`: a static gallery (`OUT/index.html`) of the inputs recorded in the
//! output folder's manifests, each with its heatmaps per method side by side and its classes.
//! Plain HTML and CSS with relative links: it opens from the file system, without a server.

use std::path::Path;

use anyhow::{Context, Result};

/// Writes `dir/index.html` from every `manifest*.jsonl` in `dir` (all shards of a run), in
/// source order, with a column per method (`methods` first, in that order); returns the number
/// of inputs shown.
pub fn write(dir: &Path, title: &str, methods: &[String], colormap: &str) -> Result<usize> {
    let mut records = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot read", dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("manifest") && n.ends_with(".jsonl"))
        .collect();
    names.sort();
    for name in names {
        let text = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
        for line in text.lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                records.push(v);
            }
        }
    }
    // The last record of a source wins (a resumed run retries failed inputs).
    let mut by_source = std::collections::BTreeMap::new();
    for r in records {
        let key = (
            r["index"].as_u64().unwrap_or(u64::MAX),
            r["source"].as_str().unwrap_or_default().to_string(),
        );
        by_source.insert(key, r);
    }
    let methods: Vec<String> = {
        let mut m: Vec<String> = methods.to_vec();
        for r in by_source.values() {
            if let Some(o) = r["methods"].as_object() {
                for k in o.keys() {
                    if !m.contains(k) {
                        m.push(k.clone());
                    }
                }
            }
        }
        m
    };
    let mut html = String::new();
    html.push_str(&format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n<p class=\"meta\">{} input(s); methods: {}</p>\n<table>\n<thead><tr><th>input</th>",
        esc(title),
        esc(title),
        by_source.len(),
        esc(&methods.join(", "))
    ));
    for m in &methods {
        html.push_str(&format!("<th>{}</th>", esc(m)));
    }
    html.push_str("<th>classes</th></tr></thead>\n<tbody>\n");
    for r in by_source.values() {
        let source = r["source"].as_str().unwrap_or_default();
        html.push_str("<tr>");
        match r["input_image"].as_str() {
            Some(img) => html.push_str(&format!(
                "<td><figure><img src=\"{}\" alt=\"{}\" loading=\"lazy\"><figcaption>{}</figcaption></figure></td>",
                esc(&url(img)),
                esc(source),
                esc(source)
            )),
            None => html.push_str(&format!(
                "<td><figure><figcaption>{}</figcaption></figure></td>",
                esc(source)
            )),
        }
        if r["status"] != "ok" {
            html.push_str(&format!(
                "<td colspan=\"{}\" class=\"error\">{}</td>",
                methods.len() + 1,
                esc(r["error"].as_str().unwrap_or("failed"))
            ));
            html.push_str("</tr>\n");
            continue;
        }
        for m in &methods {
            let o = &r["methods"][m];
            html.push_str("<td class=\"m\">");
            for key in ["heatmap", "overlay"] {
                if let Some(f) = o[key].as_str() {
                    html.push_str(&format!(
                        "<a href=\"{0}\"><img src=\"{0}\" alt=\"{1} {2}\" loading=\"lazy\"></a>",
                        esc(&url(f)),
                        esc(m),
                        key
                    ));
                }
            }
            html.push_str("</td>");
        }
        html.push_str("<td><ol>");
        if let Some(top) = r["top5"].as_array() {
            for t in top {
                let class = t["class"].as_u64().unwrap_or_default();
                let label = t["label"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("class {class}"));
                let mark = if Some(class) == r["target"].as_u64() {
                    " class=\"target\""
                } else {
                    ""
                };
                html.push_str(&format!(
                    "<li{mark}>{} <span class=\"p\">{:.3}</span></li>",
                    esc(&label),
                    t["probability"].as_f64().unwrap_or_default()
                ));
            }
        }
        html.push_str("</ol></td></tr>\n");
    }
    html.push_str(&format!(
        "</tbody>\n</table>\n<p class=\"meta\">Heatmaps drawn with the colormap {}; the explained (target) class is in bold.</p>\n</body>\n</html>\n",
        esc(colormap)
    ));
    let path = dir.join("index.html");
    lrp_ir::fsutil::write_atomic(&path, html.as_bytes())
        .with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(by_source.len())
}

const STYLE: &str = "body { font-family: sans-serif; margin: 1em; }
table { border-collapse: collapse; }
th, td { border-bottom: 1px solid #ddd; padding: 6px; vertical-align: top; text-align: left; }
img { image-rendering: pixelated; width: 160px; margin-right: 4px; }
figure { margin: 0; }
td.m { white-space: nowrap; }
figcaption { font-size: 0.8em; color: #444; max-width: 160px; word-break: break-all; }
ol { margin: 0; padding-left: 1.4em; font-size: 0.9em; white-space: nowrap; }
li.target { font-weight: bold; }
.p { color: #666; }
.error { color: #b00; }
.meta { color: #555; }
";

/// HTML text escaping.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A relative path as a URL path: `/`-separated, with the characters that URLs reserve
/// percent-encoded.
fn url(rel: &str) -> String {
    let mut out = String::new();
    for b in rel.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(
            esc("<a href=\"x\">&</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
        );
        assert_eq!(url("cats/my cat#1.png"), "cats/my%20cat%231.png");
    }
}
