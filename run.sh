#!/usr/bin/env bash
# The main job: set up, build, and load the sample (or whatever is in
# data/landing) into the embedded PostgreSQL in data/pg. Safe to run again:
# content already loaded is recognised and skipped.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
cargo build --release --quiet
mkdir -p data/landing
if [ -z "$(ls -A data/landing | grep -v '^\.gitkeep$' || true)" ]; then
  cp data/trips-sample.csv data/landing/trips-sample.csv
fi
target/release/tripload load data/landing "$@"
echo
echo "trips in the database: $(psql "$(target/release/tripload db url)" -Atc 'SELECT count(*) FROM trips')"
echo "query it with: psql \"\$(target/release/tripload db url)\"   (stop the server: target/release/tripload db stop)"
