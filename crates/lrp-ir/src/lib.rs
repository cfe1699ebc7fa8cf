//! The lrp-graph graph IR.
//!
//! A graph is a list of named nodes ([`NodeDef`]), each an [`Op`] with typed attributes, named
//! inputs and named parameter tensors, serialised as RON ([`GraphDef`]) with the weights in a
//! `.safetensors` sidecar ([`Weights`]). [`Graph`] is the validated form: nodes on a petgraph
//! `StableDiGraph`, sorted topologically, with every tensor's shape inferred.
//!
//! The format is described in `docs/graph-format.md`.

pub mod canon;
pub mod error;
pub mod fsutil;
pub mod graph;
pub mod op;
pub mod preprocess;
pub mod weights;

pub use canon::{FoldedBatchNorm, fold_batchnorm, fold_batchnorm_with_report, strip_softmax};
pub use error::IrError;
pub use graph::{
    FORMAT_VERSION, Graph, GraphDef, InputDef, Layout, NodeDef, NodeId, parse_ron, to_ron,
};
pub use op::{Op, ParamSpec, Shape};
pub use preprocess::{ChannelOrder, Filter, Fit, Preprocess};
pub use weights::{SharedTensor, Weights};
