//! Importers: model files into the lrp-graph IR.
//!
//! [`import_onnx`] reads an ONNX model (opsets 7–23, the operators listed in
//! [`onnx::SUPPORTED_OPS`]) into a validated [`lrp_ir::Graph`]; [`import_keras`] reads a Keras
//! `.keras` or whole-model `.h5` file (the layers in [`keras::SUPPORTED_LAYERS`]).

pub mod error;
pub mod keras;
pub mod onnx;

pub use error::ImportError;
pub use keras::import_keras;
pub use onnx::{import_onnx, import_onnx_model};

use std::path::Path;

use lrp_ir::{FORMAT_VERSION, Graph, GraphDef, InputDef, Layout, NodeDef, Weights};

/// The result of an import: the validated graph and notes on what was ignored.
#[derive(Debug)]
pub struct Imported {
    /// The converted graph.
    pub graph: Graph,
    /// Things the importer ignored (unread attributes, unused weights), one line each.
    pub warnings: Vec<String>,
}

/// What an importer has converted, before validation.
pub(crate) struct Converted {
    /// The graph's name (also the sidecar's stem).
    pub name: String,
    /// The graph input's name and per-sample shape.
    pub input: (String, Vec<usize>),
    /// The layout of a rank-3 (image) input; other ranks are `Layout::Other`.
    pub image_layout: Layout,
    /// The output node.
    pub output: String,
    /// The nodes.
    pub nodes: Vec<NodeDef>,
    /// The parameter tensors.
    pub weights: Weights,
    /// Notes for the user.
    pub warnings: Vec<String>,
}

impl Converted {
    /// Builds and validates the graph; validation errors name the model file.
    pub(crate) fn finish(self, path: &Path) -> Result<Imported, ImportError> {
        let (name, shape) = self.input;
        let layout = if shape.len() == 3 {
            self.image_layout
        } else {
            Layout::Other
        };
        let def = GraphDef {
            format: FORMAT_VERSION,
            weights: format!("{}.safetensors", self.name),
            name: self.name,
            input: InputDef {
                name,
                shape,
                layout,
                preprocess: None,
            },
            output: self.output,
            nodes: self.nodes,
            labels: None,
        };
        let graph = Graph::new(def, self.weights).map_err(|source| ImportError::Graph {
            path: path.to_owned(),
            source,
        })?;
        Ok(Imported {
            graph,
            warnings: self.warnings,
        })
    }
}
