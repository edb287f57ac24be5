#!/usr/bin/env bash
# The test suite: set up, then unit, property and integration tests against a
# real PostgreSQL+PostGIS cluster that the tests start themselves.
set -euo pipefail
cd "$(dirname "$0")"
TRIPLOAD_SETUP_TESTS=1 scripts/setup.sh
cargo test --release --workspace "$@"
