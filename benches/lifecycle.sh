#!/usr/bin/env bash
# Data lifecycle costs, side by side on one machine and server:
#   1. the BRIN index on trips(file_id) at load time: a ROWS-row file loaded
#      with and without it (alternating, REPEATS times each, medians);
#   2. deleting one file's trips with and without it (the delete's plan and
#      time, rolled back);
#   3. `db retain` time against the data kept: one month dropped from a
#      database holding 1, 2 and 4 months of it (time should stay flat).
# Usage: [LAYOUT=plain] benches/lifecycle.sh [ROWS] [REPEATS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-2000000}
REPEATS=${2:-3}
OUT=bench-out
mkdir -p "$OUT"
source benches/common.sh
bench_build
# LAYOUT=plain measures the plain layout (table + BRIN on datetime) on a
# cluster of its own; the default is what migrations choose here.
export TRIPLOAD_PG_DIR="$PWD/$OUT/pg-lifecycle${LAYOUT:+-$LAYOUT}"
if [ -n "${LAYOUT:-}" ]; then
  URL=$("$TL" db url)
  psql "$URL" -Atq -c "SELECT format('ALTER DATABASE %I SET tripload.time_layout = %L', current_database(), '$LAYOUT')" | psql "$URL" -q
fi
bench_db
CSV="$OUT/trips-$ROWS.csv"
[ -f "$CSV" ] || "$TL" gen --rows "$ROWS" --seed 1 --out "$CSV"

load_once() { # prints seconds
  empty_db
  mkdir -p "$OUT/landing-lc"; cp "$CSV" "$OUT/landing-lc/t.csv"
  local t0 t1
  t0=$(date +%s.%N)
  "$TL" load -q "$OUT/landing-lc/t.csv" --processed-dir "$OUT/processed-lc" >/dev/null
  t1=$(date +%s.%N)
  rm -rf "$OUT/processed-lc"
  calc "$t1 - $t0"
}
with=(); without=()
for _ in $(seq "$REPEATS"); do
  psql_ -c "DROP INDEX IF EXISTS trips_file_brin"
  without+=("$(load_once)")
  psql_ -c "CREATE INDEX trips_file_brin ON trips USING brin (file_id) WITH (autosummarize = on)"
  with+=("$(load_once)")
done
echo "load $ROWS rows: without BRIN(file_id) $(echo "${without[*]}" | median) s, with $(echo "${with[*]}" | median) s (runs: ${without[*]} / ${with[*]})"

# The delete of one file among others, with and without the index (rolled back).
empty_db
for i in 1 2 3; do "$TL" gen --rows $((ROWS / 4)) --seed $((10 + i)) --out "$OUT/landing-lc/f$i.csv"; done
"$TL" load -q "$OUT/landing-lc" --processed-dir "$OUT/processed-lc" >/dev/null
rm -rf "$OUT/processed-lc"
psql_ -c "VACUUM ANALYZE trips"
for idx in with without; do
  [ "$idx" = without ] && psql_ -c "DROP INDEX IF EXISTS trips_file_brin"
  echo "delete one file's trips, $idx the index:"
  psql_ -c "BEGIN; EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON) DELETE FROM trips WHERE file_id = 2; ROLLBACK;" | grep -E 'Scan|Execution'
done
psql_ -c "CREATE INDEX IF NOT EXISTS trips_file_brin ON trips USING brin (file_id) WITH (autosummarize = on)"

# Retention: one month dropped while 1, 2 or 4 months are kept.
for months in 1 2 4; do
  empty_db
  # load moves what it loads: a copy, so the CSV stays for the next round.
  cp "$CSV" "$OUT/landing-lc/t.csv"
  "$TL" load -q "$OUT/landing-lc/t.csv" --processed-dir "$OUT/processed-lc" >/dev/null
  rm -rf "$OUT/processed-lc"
  # Keep the first (1 + months) months of the year: the rest is deleted by
  # hand (timing only: the rollups then count trips that are gone).
  psql_ -c "DELETE FROM trips WHERE datetime >= date '2018-01-01' + make_interval(months => 1 + $months)"
  echo -n "retain, $months month(s) kept: "
  "$TL" db retain --older-than 2018-02-01 | sed 's/.*dropped/dropped/'
done
