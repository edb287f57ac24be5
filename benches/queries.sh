#!/usr/bin/env bash
# Query latency on a generated database, side by side with the brute-force SQL
# over the raw trips table: weekly counts for a region, for bounding boxes
# (each --by mode), and the two questions. Usage: benches/queries.sh [ROWS] [REPEATS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-10000000}
REPEATS=${2:-7}
OUT=bench-out
mkdir -p "$OUT/q/landing"
source benches/common.sh
bench_build
export TRIPLOAD_PG_DIR="$PWD/$OUT/pg"
bench_db
have=$(psql_ -c "SELECT coalesce(sum(rows_loaded), 0) FROM load_files")
if [ "$have" != "$ROWS" ]; then
  psql_ -c "DROP INDEX IF EXISTS trips_origin_gist, trips_destination_gist"
  empty_db
  per=2000000; n=$(( (ROWS + per - 1) / per ))
  for i in $(seq "$n"); do
    rows=$(( i < n ? per : ROWS - per * (n - 1) ))
    "$TL" gen --rows "$rows" --seed $((1000 + i)) --out "$OUT/q/landing/part-$i.csv"
  done
  "$TL" load "$OUT/q/landing" --quiet --processed-dir "$OUT/q/processed" | tail -2
  rm -rf "$OUT/q/processed"
  psql_ -c "VACUUM ANALYZE"
fi

# p50 and p95 in ms of REPEATS runs of a query (server-side execution time).
time_query() {
  local sql=$1 t=()
  for _ in $(seq "$REPEATS"); do
    t+=("$(psql "$URL" -Atq -c '\timing on' -c "$sql" | awk '/^Time:/ {print $2}')")
  done
  printf '%s\n' "${t[@]}" | sort -g | awk '{a[NR]=$1} END {printf "%.1f | %.1f", a[int((NR+1)/2)], a[int(NR*0.95+0.999)]}'
}
BOX="14.37, 50.0, 14.52, 50.13"
BRUTE_WEEK="date_trunc('week', datetime AT TIME ZONE 'UTC')::date"
inbox() { echo "ST_X($1) BETWEEN 14.37 AND 14.52 AND ST_Y($1) BETWEEN 50.0 AND 50.13"; }
declare -a Q=(
  "region (rollup)|SELECT * FROM weekly_trips_region('Prague')"
  "region (brute force)|SELECT $BRUTE_WEEK, count(*) FROM trips WHERE region_id = (SELECT id FROM regions WHERE name = 'Prague') GROUP BY 1"
  "bbox by origin|SELECT * FROM weekly_trips_bbox($BOX, 'origin')"
  "bbox by origin (brute force)|SELECT $BRUTE_WEEK, count(*) FROM trips WHERE $(inbox origin) GROUP BY 1"
  "bbox by destination|SELECT * FROM weekly_trips_bbox($BOX, 'destination')"
  "bbox by both|SELECT * FROM weekly_trips_bbox($BOX, 'both')"
  "bbox by both (brute force)|SELECT $BRUTE_WEEK, count(*) FROM trips WHERE $(inbox origin) AND $(inbox destination) GROUP BY 1"
  "question 1 (rollup)|$(sed -n '/^-- 1\./,/;$/p' sql/examples/questions.sql | grep -v '^--')"
  "question 2 (rollup)|$(sed -n '/^-- 2\./,/;$/p' sql/examples/questions.sql | grep -v '^--')"
  "question 2 (brute force)|SELECT DISTINCT region FROM trips_named WHERE datasource = 'cheap_mobile'"
)
run_all() {
  for q in "${Q[@]}"; do
    printf '| %s | %s |\n' "${q%%|*}" "$(time_query "${q#*|}")"
  done
}
psql_ -c "DROP INDEX IF EXISTS trips_origin_gist, trips_destination_gist"
{
echo "## Query latency, $(psql_ -c 'SELECT count(*) FROM trips') trips, $REPEATS runs each (p50 | p95 ms, server execution)"
echo
echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB RAM; $(psql_ -c 'SELECT version()' | cut -d, -f1); box $BOX"
echo
echo "Without spatial indexes (as loaded):"
echo
echo "| query | p50 ms | p95 ms |"; echo "|---|---:|---:|"
run_all
s=$(date +%s.%N); psql_ -c "CREATE INDEX IF NOT EXISTS trips_origin_gist ON trips USING gist (origin)" -c "CREATE INDEX IF NOT EXISTS trips_destination_gist ON trips USING gist (destination)" -c "ANALYZE trips"; e=$(date +%s.%N)
echo
echo "After \`tripload db index --spatial\` (built in $(awk "BEGIN {printf \"%.0f\", $e - $s}") s):"
echo
echo "| query | p50 ms | p95 ms |"; echo "|---|---:|---:|"
run_all
} | tee "$OUT/queries-$ROWS.md"
