#!/usr/bin/env bash
# Sets up (ONNX Runtime library) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
cargo test --workspace --locked "$@"
