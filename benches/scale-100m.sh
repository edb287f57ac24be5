#!/usr/bin/env bash
# The 100M-row proof, one command (about 30-60 minutes on 2 cores):
#   benches/scale-100m.sh [ROWS] [ROWS_PER_FILE]
# 1. generates ROWS (default 100M) trips as files of ROWS_PER_FILE (default 15M,
#    ~1.85 GB) in $WORK/landing;
# 2. loads them one file after the other with `tripload load` into a fresh
#    embedded database ($WORK/pg), timing each file as the table grows;
# 3. measures the database size, and the latency (p50/p95) of the weekly
#    average for a region, for bounding boxes in each --by mode, and of the two
#    questions — each side by side with the brute-force SQL over `trips`, and
#    checks that both give the same numbers;
# 4. writes everything as Markdown to docs/scale-100m.md (OUT_MD to change).
# Env: WORK (default bench-out/scale), KEEP_CSV=1 keeps the generated files,
# REPEATS (default 7) / BRUTE_REPEATS (default 3), RANDOM_BOXES (default 15),
# SPATIAL=0 skips the GiST phase. QUERIES_ONLY=1 reuses the database a
# previous run left in $WORK/pg (no generation, no load) and appends a rerun of
# the query tables to $OUT_MD: for measuring a change to the query functions
# without reloading 100M rows (the functions follow the binary: `db migrate`).
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-100000000}
PER=${2:-15000000}
WORK=${WORK:-bench-out/scale}
REPEATS=${REPEATS:-7}
BRUTE_REPEATS=${BRUTE_REPEATS:-3}
SPATIAL=${SPATIAL:-1}
RANDOM_BOXES=${RANDOM_BOXES:-15}
OUT_MD=${OUT_MD:-docs/scale-100m.md}
QUERIES_ONLY=${QUERIES_ONLY:-0}
case $WORK in /*) ;; *) WORK="$PWD/$WORK" ;; esac
mkdir -p "$WORK/landing"
chmod 755 "$WORK" "$(dirname "$WORK")"
source benches/common.sh
bench_build
export TRIPLOAD_PG_DIR="$WORK/pg"
if [ "$QUERIES_ONLY" = 1 ]; then
  [ -d "$TRIPLOAD_PG_DIR" ] || { echo "QUERIES_ONLY=1 needs the database of an earlier run in $TRIPLOAD_PG_DIR" >&2; exit 1; }
else
  "$TL" db stop >/dev/null 2>&1 || true
  rm -rf "$TRIPLOAD_PG_DIR" "$WORK/processed" "$WORK/failed"
fi
bench_db
md() { echo "$@" >>"$OUT_MD.tmp"; }
: >"$OUT_MD.tmp"
if [ "$QUERIES_ONLY" = 1 ]; then
  ROWS=$(psql_ -c "SELECT count(*) FROM trips")
  md
  md "## Rerun of the queries on $(date -u +%Y-%m-%d) (\`QUERIES_ONLY=1\`, same database, build $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- sql src || echo ' with uncommitted changes'))"
  md
  md "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')). GiST indexes present: $(psql_ -c "SELECT CASE WHEN to_regclass('trips_origin_gist') IS NULL THEN 'no' ELSE 'yes' END")."
  md
else

# 1. Generate (two files at a time: one per core).
n=$(( (ROWS + PER - 1) / PER ))
gen_start=$(date +%s.%N)
for i in $(seq "$n"); do
  rows=$(( i < n ? PER : ROWS - PER * (n - 1) ))
  f="$WORK/landing/trips-$(printf %02d "$i").csv"
  if [ ! -f "$f" ] || [ "$(cat "$f.rows" 2>/dev/null)" != "$rows" ]; then
    ( "$TL" gen --rows "$rows" --seed $((5000 + i)) --out "$f.part" && mv "$f.part" "$f" && echo "$rows" >"$f.rows" ) &
    [ $((i % 2)) -eq 0 ] && wait
  fi
done
wait
gen_s=$(calc "$(date +%s.%N) - $gen_start")
BYTES=$(cat "$WORK"/landing/*.csv | wc -c)

md "# 100M-row proof: load and query latency"
md
md "Produced by \`benches/scale-100m.sh $ROWS $PER\` on $(date -u +%Y-%m-%d)."
md
md "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(free -g | awk '/Mem:/ {print $2}') GiB RAM, shared and noisy;"
md "$(psql_ -c 'SELECT version()' | cut -d, -f1); PostGIS $(psql_ -c 'SELECT postgis_lib_version()'); TimescaleDB: $(psql_ -c "SELECT coalesce((SELECT extversion FROM pg_extension WHERE extname='timescaledb'), 'absent (plain table + BRIN on datetime)')")."
md "Server: the embedded cluster's settings (\`shared_buffers=512MB\`, \`max_wal_size=8GB\`, \`checkpoint_timeout=30min\`, \`wal_level=replica\`, fsync on)."
md
md "Input: $ROWS trips in $n files of up to $PER rows, $(( BYTES / 1000000 )) MB of CSV (\`tripload gen\`: 6 cities, points uniform in ±0.15° × ±0.1° around each centre, datetimes over 2018), generated in $(printf %.0f "$gen_s") s."
md

# 2. Load, one file after the other; each file is one transaction.
md "## Load"
md
md "| file | rows | table rows before | seconds | rows/s | s per 10M rows | client peak RSS |"
md "|---|---:|---:|---:|---:|---:|---:|"
total_s=0; before=0
for f in "$WORK"/landing/*.csv; do
  rows=$(cat "$f.rows")
  s=$(date +%s.%N)
  /usr/bin/time -f %M -o "$WORK/rss" "$TL" load "$f" --jobs 1 --quiet --processed-dir "$WORK/processed" >/dev/null
  e=$(date +%s.%N)
  t=$(calc "$e - $s"); total_s=$(calc "$total_s + $t")
  md "$(printf '| %s | %d | %d | %.1f | %.0f | %.1f | %d MiB |' "$(basename "$f")" "$rows" "$before" "$t" "$(calc "$rows / $t")" "$(calc "$t * 10000000 / $rows")" "$(( $(cat "$WORK/rss") / 1024 ))")"
  before=$(( before + rows ))
  # Keep the file for a rerun only if asked: 12 GB of CSV next to the database is a lot.
  if [ "${KEEP_CSV:-0}" = 1 ]; then mv "$WORK/processed/$(basename "$f")" "$f"; else rm -f "$WORK/processed/$(basename "$f")" "$f.rows"; fi
  echo "loaded $(basename "$f") in $t s" >&2
done
loaded=$(psql_ -c "SELECT count(*) FROM trips")
[ "$loaded" = "$ROWS" ] || { echo "expected $ROWS trips, the table has $loaded" >&2; exit 1; }
md
md "**Total: $ROWS rows in $(printf %.0f "$total_s") s = $(printf %.0f "$(calc "$ROWS / $total_s")") rows/s** ($(printf %.0f "$(calc "$BYTES / 1000000 / $total_s")") MB/s of CSV), every row verified by \`count(*)\`. The reference solution loaded 5M rows in 78 s (64k rows/s)."
md
psql_ -c "VACUUM ANALYZE"
md "## Database size (after VACUUM ANALYZE)"
md
md "| object | size |"
md "|---|---:|"
psql_ -F ' | ' -c "SELECT '| ' || x.name, pg_size_pretty(x.bytes) || ' |' FROM (VALUES
  ('database', pg_database_size(current_database())),
  ('trips (heap + BRIN)', pg_total_relation_size('trips')),
  ('rollup_region_week', pg_total_relation_size('rollup_region_week')),
  ('rollup_region_source', pg_total_relation_size('rollup_region_source')),
  ('rollup_cell_week', pg_total_relation_size('rollup_cell_week')),
  ('rollup_cell_points', pg_total_relation_size('rollup_cell_points'))) AS x(name, bytes)" | sed 's/$//' >>"$OUT_MD.tmp"
md
fi

# 3. Query latency, side by side with brute force, and equality of the answers.
time_query() {
  local reps=$1 sql=$2 t=()
  for _ in $(seq "$reps"); do
    t+=("$(psql "$URL" -Atq -c '\timing on' -c "$sql" | awk '/^Time:/ {print $2}')")
  done
  printf '%s\n' "${t[@]}" | sort -g | awk '{a[NR]=$1} END {printf "%.1f | %.1f", a[int((NR+1)/2)], a[int(NR*0.95+0.999)]}'
}
same() { # two queries returning (week, trips) rows; weeks with 0 trips ignored
  if diff <(psql_ -c "SELECT * FROM ($1) q WHERE trips > 0 ORDER BY 1") <(psql_ -c "SELECT * FROM ($2) q WHERE trips > 0 ORDER BY 1") >/dev/null; then echo yes; else echo "**NO**"; fi
}
WEEK="date_trunc('week', datetime AT TIME ZONE 'UTC')::date"
inbox() { echo "ST_X($1) BETWEEN $2 AND $4 AND ST_Y($1) BETWEEN $3 AND $5"; }
declare -a BOXES=(
  "14.37,50.0,14.52,50.13|Prague, 0.15° × 0.13°"
  "14.41,50.05,14.43,50.07|Prague, 0.02° × 0.02°"
  "7.5,44.9,7.9,45.2|Turin, whole city"
)
queries() {
  md "| query | ours p50 ms | ours p95 ms | brute force p50 ms | brute force p95 ms | same answer |"
  md "|---|---:|---:|---:|---:|---|"
  local ours brute
  ours="SELECT week, trips FROM weekly_trips_region('Prague')"
  brute="SELECT $WEEK AS week, count(*) AS trips FROM trips WHERE region_id = (SELECT id FROM regions WHERE name = 'Prague') GROUP BY 1"
  md "| weekly average, region Prague | $(time_query "$REPEATS" "$ours") | $(time_query "$BRUTE_REPEATS" "$brute") | $(same "$ours" "$brute") |"
  for b in "${BOXES[@]}"; do
    IFS=, read -r x0 y0 x1 y1 <<<"${b%%|*}"
    for by in origin destination both; do
      ours="SELECT week, trips FROM weekly_trips_bbox($x0, $y0, $x1, $y1, '$by')"
      case $by in
        origin) cond=$(inbox origin "$x0" "$y0" "$x1" "$y1") ;;
        destination) cond=$(inbox destination "$x0" "$y0" "$x1" "$y1") ;;
        both) cond="$(inbox origin "$x0" "$y0" "$x1" "$y1") AND $(inbox destination "$x0" "$y0" "$x1" "$y1")" ;;
      esac
      brute="SELECT $WEEK AS week, count(*) AS trips FROM trips WHERE $cond GROUP BY 1"
      md "| weekly average, bbox ${b#*|} by $by | $(time_query "$BRUTE_REPEATS" "$ours") | $(time_query "$BRUTE_REPEATS" "$brute") | $(same "$ours" "$brute") |"
      echo "bbox ${b#*|} $by done" >&2
    done
  done
  # Random boxes inside a city (origin mode): one run each, so the p50 is over
  # boxes rather than repeats of one box.
  local t_ours=() t_brute=() ok=yes i
  for i in $(seq "$RANDOM_BOXES"); do
    IFS=, read -r x0 y0 x1 y1 <<<"$(awk -v s="$i" 'BEGIN { srand(s); x = 14.29 + rand() * 0.25; y = 49.98 + rand() * 0.17;
      printf "%.6f,%.6f,%.6f,%.6f", x, y, x + 0.005 + rand() * 0.1, y + 0.005 + rand() * 0.08 }')"
    ours="SELECT week, trips FROM weekly_trips_bbox($x0, $y0, $x1, $y1, 'origin')"
    brute="SELECT $WEEK AS week, count(*) AS trips FROM trips WHERE $(inbox origin "$x0" "$y0" "$x1" "$y1") GROUP BY 1"
    t_ours+=("$(psql "$URL" -Atq -c '\timing on' -c "$ours" | awk '/^Time:/ {print $2}')")
    t_brute+=("$(psql "$URL" -Atq -c '\timing on' -c "$brute" | awk '/^Time:/ {print $2}')")
    [ "$(same "$ours" "$brute")" = yes ] || ok="**NO** (box $x0,$y0,$x1,$y1)"
  done
  pct() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {printf "%.1f | %.1f", a[int((NR+1)/2)], a[int(NR*0.95+0.999)]}'; }
  md "| weekly average, $RANDOM_BOXES random boxes in Prague (0.005°-0.105° wide) by origin, one run each | $(pct "${t_ours[@]}") | $(pct "${t_brute[@]}") | $ok |"
  echo "random boxes done" >&2
  local q1 q2
  q1=$(sed -n '/^-- 1\./,/;$/p' sql/examples/questions.sql | grep -v '^--' | tr -d ';')
  q2=$(sed -n '/^-- 2\./,/;$/p' sql/examples/questions.sql | grep -v '^--' | tr -d ';')
  local b1="WITH top AS (SELECT region_id FROM trips GROUP BY 1 ORDER BY count(*) DESC LIMIT 2) SELECT d.name, r.name, t.datetime FROM trips t JOIN top USING (region_id) JOIN regions r ON r.id = t.region_id JOIN datasources d ON d.id = t.datasource_id ORDER BY t.datetime DESC LIMIT 1"
  local b2="SELECT DISTINCT region FROM trips_named WHERE datasource = 'cheap_mobile' ORDER BY 1"
  local s1 s2
  if diff <(psql_ -c "$q1") <(psql_ -c "$b1") >/dev/null; then s1=yes; else s1="**NO**"; fi
  if diff <(psql_ -c "$q2") <(psql_ -c "$b2") >/dev/null; then s2=yes; else s2="**NO**"; fi
  md "| question 1: latest datasource of the two top regions | $(time_query "$REPEATS" "$q1") | $(time_query "$BRUTE_REPEATS" "$b1") | $s1 |"
  md "| question 2: regions of cheap_mobile | $(time_query "$REPEATS" "$q2") | $(time_query "$BRUTE_REPEATS" "$b2") | $s2 |"
  md
}
if [ "$QUERIES_ONLY" = 1 ]; then
  md "Client-measured milliseconds (psql \`\\timing\`, a new session per query), ours over $REPEATS runs (bounding boxes $BRUTE_REPEATS), brute force over $BRUTE_REPEATS runs, alternating, on $ROWS trips."
  md
  queries
  cat "$OUT_MD.tmp" >>"$OUT_MD"
  rm "$OUT_MD.tmp"
  cat "$OUT_MD"
  exit 0
fi
md "## Query latency on $ROWS rows"
md
md "Client-measured milliseconds (psql \`\\timing\`), ours over $REPEATS runs (bounding boxes $BRUTE_REPEATS), brute force over $BRUTE_REPEATS runs, alternating, a new psql session per query, on the same server. *Same answer* compares every non-empty week of ours with the brute-force \`GROUP BY\` (and the two questions' rows)."
md
md "### As loaded (no spatial index)"
md
queries
md "Answers of the two questions: $(psql_ -F ', ' -c "$(sed -n '/^-- 1\./,/;$/p' sql/examples/questions.sql | grep -v '^--' | tr -d ';')") / $(psql_ -c "$(sed -n '/^-- 2\./,/;$/p' sql/examples/questions.sql | grep -v '^--' | tr -d ';')" | paste -sd' ')."
md
if [ "$SPATIAL" = 1 ]; then
  s=$(date +%s.%N)
  "$TL" db index --spatial >&2
  e=$(date +%s.%N)
  md "### After \`tripload db index --spatial\` (GiST on origin and destination, built in $(printf %.0f "$(calc "$e - $s")") s)"
  md
  REPEATS=$BRUTE_REPEATS queries
fi
mv "$OUT_MD.tmp" "$OUT_MD"
cat "$OUT_MD"
