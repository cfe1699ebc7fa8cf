//! Atomic file output: data goes to a temporary file in the target's folder, which is renamed
//! over the target only once it is complete, so no reader ever sees a half-written file.

use std::io::Write;
use std::path::Path;

/// Writes `path` atomically with whatever `fill` writes; on error nothing is left behind. Errors
/// say what is wrong without naming the temporary file (the caller names `path`), e.g. "the
/// folder out does not exist".
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    write_inner(path, fill).map_err(clean)
}

fn write_inner(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        let (kind, what) = if dir.exists() {
            (
                std::io::ErrorKind::NotADirectory,
                format!("{} is not a directory", dir.display()),
            )
        } else {
            (
                std::io::ErrorKind::NotFound,
                format!("the folder {} does not exist", dir.display()),
            )
        };
        return Err(std::io::Error::new(kind, what));
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(".lrp-tmp-")
        .tempfile_in(dir)?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        fill(&mut w)?;
        w.flush()?;
    }
    #[cfg(unix)]
    {
        // Temporary files are created private (0600); outputs get the usual 0644.
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Drops the temporary file's path that `tempfile` attaches to its errors.
fn clean(e: std::io::Error) -> std::io::Error {
    if let Some(code) = e.raw_os_error() {
        return std::io::Error::from_raw_os_error(code);
    }
    let m = e.to_string();
    match m.find(" at path \"") {
        Some(i) if m[i..].contains(".lrp-tmp-") => {
            std::io::Error::new(e.kind(), m[..i].to_string())
        }
        _ => e,
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}
