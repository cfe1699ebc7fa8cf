//! Import errors.

use std::path::PathBuf;

/// An import error: names the file and, where one is at fault, the node and its op type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The file cannot be read or decoded.
    #[error(transparent)]
    File(#[from] lrp_onnx::OnnxFileError),
    /// Something in the model is not supported or not valid.
    #[error("{}: {}{message}", path.display(), location(node, op_type))]
    Model {
        /// The model file.
        path: PathBuf,
        /// The node at fault (its name, or its first output if unnamed).
        node: Option<String>,
        /// That node's op type.
        op_type: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// The converted graph failed validation.
    #[error("{}: the converted graph is invalid: {source}", path.display())]
    Graph {
        /// The model file.
        path: PathBuf,
        /// The validation error.
        source: lrp_ir::IrError,
    },
}

fn location(node: &Option<String>, op: &Option<String>) -> String {
    match (node, op) {
        (Some(n), Some(o)) => format!("node '{n}' ({o}): "),
        (Some(n), None) => format!("'{n}': "),
        (None, Some(o)) => format!("{o}: "),
        (None, None) => String::new(),
    }
}
