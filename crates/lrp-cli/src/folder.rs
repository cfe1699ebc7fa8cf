//! Folder runs: shards, the manifest (JSON Lines) and what `--resume` may skip.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

/// `--shard K/N`: shard `k` of `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, `0 ≤ k < n`.
    pub k: u64,
    /// Number of shards.
    pub n: u64,
}

impl Shard {
    /// Parses `K/N`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || anyhow!("--shard '{s}': expected K/N with 0 ≤ K < N, e.g. 0/4");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (k, n): (u64, u64) = (
            k.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if n == 0 || k >= n {
            return Err(bad());
        }
        Ok(Shard { k, n })
    }

    /// Whether the input at `relative` (its path inside the input folder) belongs to this shard:
    /// FNV-1a (64 bit) of the path's components joined by `/`, modulo N. The same file goes to
    /// the same shard on every machine and whatever else is in the folder.
    pub fn owns(&self, relative: &Path) -> bool {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (i, part) in relative.iter().enumerate() {
            if i > 0 {
                h = (h ^ u64::from(b'/')).wrapping_mul(0x100_0000_01b3);
            }
            for &b in part.as_encoded_bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
        }
        h % self.n == self.k
    }

    /// The manifest's file name: `manifest.jsonl`, or `manifest-K-of-N.jsonl` for a shard.
    pub fn manifest_name(shard: Option<Shard>) -> String {
        match shard {
            None => "manifest.jsonl".into(),
            Some(s) => format!("manifest-{}-of-{}.jsonl", s.k, s.n),
        }
    }
}

/// The manifest: one JSON line per input, appended and flushed as each input is done.
pub struct Manifest {
    path: PathBuf,
    file: std::fs::File,
}

impl Manifest {
    /// Opens `dir/name` for appending (`resume`) or anew, and returns it with the inputs an
    /// earlier run recorded as done (`"status": "ok"`) whose listed outputs all exist.
    pub fn open(dir: &Path, name: &str, resume: bool) -> Result<(Self, HashSet<String>)> {
        let path = dir.join(name);
        let mut done = HashSet::new();
        // Whether the earlier run's last line was cut short by a crash.
        let mut cut = false;
        if resume && path.exists() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("{}: cannot read", path.display()))?;
            cut = !text.is_empty() && !text.ends_with('\n');
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                // A line cut short by a crash is not an error: its input is done again.
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                if v["status"] == "ok"
                    && let Some(src) = v["source"].as_str()
                    && outputs_exist(dir, &v)
                {
                    done.insert(src.to_string());
                }
            }
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(resume)
            .write(true)
            .truncate(!resume)
            .open(&path)
            .with_context(|| format!("{}: cannot write", path.display()))?;
        // A line cut short gets its end, so the next record starts a line.
        if cut {
            file.write_all(b"\n")
                .with_context(|| format!("{}: cannot write", path.display()))?;
        }
        Ok((Manifest { path, file }, done))
    }

    /// Appends one record as a line.
    pub fn write(&mut self, record: &serde_json::Value) -> Result<()> {
        let mut line = serde_json::to_string(record).expect("json");
        line.push('\n');
        // One write per line: with O_APPEND a line is never interleaved with another.
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .with_context(|| format!("{}: cannot write", self.path.display()))
    }
}

/// Whether every output a manifest record lists (`methods.*.{heatmap,relevance,overlay}`,
/// `input_image`) exists under `dir`.
fn outputs_exist(dir: &Path, record: &serde_json::Value) -> bool {
    let mut files: Vec<&str> = Vec::new();
    if let Some(methods) = record["methods"].as_object() {
        for m in methods.values() {
            for key in ["heatmap", "relevance", "overlay"] {
                if let Some(f) = m[key].as_str() {
                    files.push(f);
                }
            }
        }
    }
    if let Some(f) = record["input_image"].as_str() {
        files.push(f);
    }
    !files.is_empty() && files.iter().all(|f| dir.join(f).is_file())
}

/// Removes temporary files (`.lrp-tmp-*`) that an interrupted run left under `dir`.
pub fn sweep_temporaries(dir: &Path) {
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() {
                pending.push(e.path());
            } else if name.to_string_lossy().starts_with(".lrp-tmp-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// `relative` as a `/`-separated string (the manifest's `source`).
pub fn slash_path(relative: &Path) -> String {
    relative
        .iter()
        .map(|p| p.to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Checks that `--shard`/`--resume` are only used with a folder input.
pub fn check_folder_options(is_dir: bool, shard: &Option<String>, resume: bool) -> Result<()> {
    if !is_dir && (shard.is_some() || resume) {
        bail!("--shard and --resume work with a folder input (--input DIR)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_files() {
        let files: Vec<PathBuf> = (0..200)
            .map(|i| PathBuf::from(format!("class{}/img_{i}.jpg", i % 7)))
            .collect();
        let n = 4;
        let mut seen = vec![0; files.len()];
        for k in 0..n {
            let s = Shard { k, n };
            let mine = files.iter().filter(|f| s.owns(f)).count();
            // Roughly a quarter each.
            assert!((25..=75).contains(&mine), "shard {k}: {mine}");
            for (i, f) in files.iter().enumerate() {
                if s.owns(f) {
                    seen[i] += 1;
                }
            }
        }
        assert!(seen.iter().all(|&c| c == 1));
        // FNV-1a of "a": a fixed value on every machine.
        let s = Shard {
            k: 0xaf63_dc4c_8601_ec8c % 5,
            n: 5,
        };
        assert!(s.owns(Path::new("a")));
    }

    #[test]
    fn shard_syntax() {
        assert_eq!(Shard::parse("1/3").unwrap(), Shard { k: 1, n: 3 });
        for bad in ["3/3", "1", "a/2", "0/0", "-1/2"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }
}
