//! lrp-graph: Layer-wise Relevance Propagation for converted image classifiers.
