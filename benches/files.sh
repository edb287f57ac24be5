#!/usr/bin/env bash
# Query latency against the number of files: the same ROWS trips loaded as one
# file into one database and as FILES small files (the one file split by
# lines, header kept) into another, then the same queries on both, in
# alternation: weekly counts for a region, and for the 0.15 x 0.13 degree
# Prague box and BOXES random boxes, by origin and by destination. Prints p50
# per query and database, the ratio many/one, and what each layout holds
# (rollup rows, relations). Usage: benches/files.sh [ROWS] [FILES] [REPEATS] [BOXES]
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-10000000}
FILES=${2:-1000}
REPEATS=${3:-9}
BOXES=${4:-8}
OUT="$PWD/bench-out/files"
mkdir -p "$OUT"
source benches/common.sh
bench_build

CSV="$OUT/trips-$ROWS.csv"
[ -f "$CSV" ] || "$TL" gen --rows "$ROWS" --seed 23 --out "$CSV"

# Two embedded servers, one per layout: $URL_one and $URL_many.
for layout in one many; do
  export TRIPLOAD_PG_DIR="$OUT/pg-$layout"
  bench_db
  printf -v "URL_$layout" '%s' "$URL"
done
q() { local u="URL_$1"; shift; psql "${!u}" -v ON_ERROR_STOP=1 -Atq "$@"; }

# Loads the layout unless it already holds ROWS trips; prints its load time.
load_layout() {
  local layout=$1 dir="$OUT/$1"
  if [ "$(q "$layout" -c 'SELECT coalesce(sum(rows_loaded), 0) FROM load_files')" = "$ROWS" ]; then
    echo "already loaded"
    return
  fi
  URL=$(eval echo "\$URL_$layout") empty_db
  rm -rf "$dir" && mkdir -p "$dir/landing"
  if [ "$layout" = one ]; then
    cp "$CSV" "$dir/landing/all.csv"
  else
    HEADER=$(head -1 "$CSV")
    export HEADER
    tail -n +2 "$CSV" |
      split -l $(( (ROWS + FILES - 1) / FILES )) -d -a 5 --additional-suffix=.csv \
        --filter='{ printf "%s\n" "$HEADER"; cat; } > "$FILE"' - "$dir/landing/part-"
  fi
  local s e
  s=$(date +%s.%N)
  TRIPLOAD_PG_DIR="$OUT/pg-$layout" "$TL" load "$dir/landing" --quiet --jobs 2 --processed-dir "$dir/processed" | tail -1
  e=$(date +%s.%N)
  rm -rf "$dir"
  local have
  have=$(q "$layout" -c 'SELECT coalesce(sum(rows_loaded), 0) FROM load_files')
  if [ "$have" != "$ROWS" ]; then
    echo "the $layout layout holds $have trips, not $ROWS" >&2
    exit 1
  fi
  q "$layout" -c "VACUUM ANALYZE"
  echo "loaded in $(calc "$e - $s") s"
}
LOAD_one=$(load_layout one)
LOAD_many=$(load_layout many)

# p50 in ms of REPEATS runs of a query (server-side execution time).
p50() {
  local layout=$1 sql=$2 t=()
  for _ in $(seq "$REPEATS"); do
    t+=("$(q "$layout" -c '\timing on' -c "$sql" | awk '/^Time:/ {print $2}')")
  done
  printf '%s\n' "${t[@]}" | median
}
# Queries: the region, the Prague box, random boxes of 0.02 to 0.3 degrees
# around the generated cities (fixed seed: the same boxes every run).
declare -a Q=("region Prague|SELECT * FROM weekly_trips_region('Prague')")
PRAGUE="14.37, 50.0, 14.52, 50.13"
for by in origin destination; do
  Q+=("Prague box by $by|SELECT * FROM weekly_trips_bbox($PRAGUE, '$by')")
done
while read -r x0 y0 x1 y1; do
  for by in origin destination; do
    Q+=("box $x0,$y0,$x1,$y1 by $by|SELECT * FROM weekly_trips_bbox($x0, $y0, $x1, $y1, '$by')")
  done
done < <(awk -v n="$BOXES" 'BEGIN {
  srand(7);
  split("14.4378 50.0755 7.6869 45.0703 9.9937 53.5511 13.4050 52.5200 16.3738 48.2082 9.1900 45.4642", c, " ");
  for (i = 0; i < n; i++) {
    k = int(rand() * 6); w = 0.02 + rand() * 0.28; h = 0.02 + rand() * 0.18;
    x = c[2 * k + 1] - 0.15 + rand() * (0.3 - w); y = c[2 * k + 2] - 0.1 + rand() * (0.2 - h);
    printf "%.4f %.4f %.4f %.4f\n", x, y, x + w, y + h;
  } }')

# Both layouts must answer the same.
for qq in "${Q[@]}"; do
  sql=${qq#*|}
  if [ "$(q one -c "$sql")" != "$(q many -c "$sql")" ]; then
    echo "different answers for: $sql" >&2
    exit 1
  fi
done

ratios=()
{
  echo "## $ROWS trips as 1 file and as $FILES files, p50 of $REPEATS runs (ms, server execution)"
  echo
  echo "Commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src sql || echo ' (with uncommitted changes)'), $(date -u +%Y-%m-%d), $(nproc) cores; loads: one file $LOAD_one, $FILES files $LOAD_many (--jobs 2)."
  echo
  echo "| query | 1 file | $FILES files | ratio |"
  echo "|---|---:|---:|---:|"
  for qq in "${Q[@]}"; do
    a=$(p50 one "${qq#*|}")
    b=$(p50 many "${qq#*|}")
    r=$(calc "$b / $a")
    ratios+=("$r")
    printf '| %s | %.1f | %.1f | %.2f |\n' "${qq%%|*}" "$a" "$b" "$r"
  done
  echo
  echo "Ratio many/one: median $(printf '%s\n' "${ratios[@]}" | median), max $(printf '%s\n' "${ratios[@]}" | sort -g | tail -1)."
  echo
  echo "| layout | rollup_cell_points rows | of them compacted | rollup_cell_week rows | rollup_region_week rows | relations (pg_class) |"
  echo "|---|---:|---:|---:|---:|---:|"
  for layout in one many; do
    q "$layout" -c "SELECT '| $layout | ' || (SELECT count(*) FROM rollup_cell_points) || ' | '
        || (SELECT count(*) FROM rollup_cell_points WHERE file_id = 0) || ' | '
        || (SELECT count(*) FROM rollup_cell_week) || ' | ' || (SELECT count(*) FROM rollup_region_week) || ' | '
        || (SELECT count(*) FROM pg_class) || ' |'"
  done
} | tee "$OUT/files-$ROWS-$FILES.md"
