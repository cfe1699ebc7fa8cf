//! Errors of loading, validating and saving graphs.

use std::path::PathBuf;

/// An error of the graph IR: it names the file and, where one is at fault, the node and its op.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IrError {
    /// A file could not be read or written.
    #[error("{}: {action}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was attempted ("cannot read", "cannot write").
        action: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The RON text does not parse or does not match the format.
    #[error("{}:{line}:{col}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        col: usize,
        /// What is wrong.
        message: String,
    },
    /// The graph is well-formed RON but not a valid graph.
    #[error("{}{}", path_prefix(path), Located { node, op, message })]
    Invalid {
        /// The graph file, when the graph came from one.
        path: Option<PathBuf>,
        /// The node at fault, if any.
        node: Option<String>,
        /// That node's op, if any.
        op: Option<&'static str>,
        /// What is wrong.
        message: String,
    },
    /// The weights sidecar is unreadable or inconsistent with the graph.
    #[error("{}: {message}", path.display())]
    Weights {
        /// The `.safetensors` file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn path_prefix(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!("{}: ", p.display()))
        .unwrap_or_default()
}

struct Located<'a> {
    node: &'a Option<String>,
    op: &'a Option<&'static str>,
    message: &'a String,
}

impl std::fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.node, self.op) {
            (Some(n), Some(op)) => write!(f, "node '{n}' ({op}): {}", self.message),
            (Some(n), None) => write!(f, "node '{n}': {}", self.message),
            _ => write!(f, "{}", self.message),
        }
    }
}

impl IrError {
    /// A validation error about `node` (with op `op`).
    pub fn node(node: &str, op: &'static str, message: impl Into<String>) -> Self {
        IrError::Invalid {
            path: None,
            node: Some(node.to_owned()),
            op: Some(op),
            message: message.into(),
        }
    }

    /// A validation error about the graph as a whole.
    pub fn graph(message: impl Into<String>) -> Self {
        IrError::Invalid {
            path: None,
            node: None,
            op: None,
            message: message.into(),
        }
    }

    /// Attaches the graph file's path to a validation error that has none.
    pub fn with_path(mut self, file: &std::path::Path) -> Self {
        if let IrError::Invalid { path, .. } = &mut self
            && path.is_none()
        {
            *path = Some(file.to_owned());
        }
        self
    }
}
