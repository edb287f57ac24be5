#!/usr/bin/env bash
# End-to-end comparison, side by side in one run on one machine and server:
#   tripload load            (this project)
#   tripload, no rollups     (load --no-rollups: what the rollups and
#                             cell points cost at load time)
#   psql \copy (FORMAT csv)  (the reference solution's approach: CSV into a
#                             table with natural columns, WKT parsed by the server)
#   pgloader                 (Debian's pgloader: CSV into the same natural table,
#                             its default batches and 2 COPY workers)
#   server COPY FROM a pre-encoded binary file of the same rows into the same
#                             `trips` table (the ceiling: no client at all)
# Runs alternate, each repeated REPEATS times; prints medians and ratios, and
# the client's peak RSS. Usage: benches/compare.sh [ROWS] [REPEATS]
# PGLOADER=0 leaves pgloader out (it takes ~30x longer than the rest).
# BASELINE_TL=/path/to/tripload adds another build of tripload (same schema),
# e.g. the previous commit's, as the row `baseline`: a change measured side by
# side with what it replaces. BASELINE_PG_DIR=/path gives the baseline its own
# embedded cluster there (its own schema and server settings: for a build
# whose migrations or server configuration differ from this one's).
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-2000000}
REPEATS=${2:-3}
OUT=bench-out
mkdir -p "$OUT"
chmod 755 "$OUT"
source benches/common.sh
bench_build
PGLOADER=${PGLOADER:-1}
if [ "$PGLOADER" = 1 ] && ! command -v pgloader >/dev/null; then
  if [ "$(id -u)" = 0 ]; then apt-get install -y -q pgloader >/dev/null; else sudo apt-get install -y -q pgloader >/dev/null; fi \
    || echo "pgloader could not be installed: its row is left out" >&2
fi
export TRIPLOAD_PG_DIR="$PWD/$OUT/pg"
bench_db

CSV="$OUT/trips-$ROWS.csv"
[ -f "$CSV" ] || "$TL" gen --rows "$ROWS" --seed 1 --out "$CSV"
BYTES=$(stat -c %s "$CSV")
# The server reads the binary file itself, as its own user.
SHARED=/tmp/tripload-bench; mkdir -p "$SHARED"; chmod 777 "$SHARED"
BIN="$SHARED/trips-$ROWS.bin"

# Same schema as a fresh load: no spatial indexes (benches/queries.sh adds them).
psql_ -c "DROP INDEX IF EXISTS trips_origin_gist, trips_destination_gist"
psql_ -c "CREATE TABLE IF NOT EXISTS trips_natural (region text, origin geometry(Point,4326), destination geometry(Point,4326), datetime timestamptz, datasource text)"

# Each run starts on an idle server: the previous run's rows are emptied and
# checkpointed, and an autovacuum worker still busy with them (a 15M-row load
# triggers one) is waited for, up to 2 minutes, instead of landing its CPU on
# whichever method comes next.
reset_db() {
  empty_db
  psql_ -c "TRUNCATE trips_natural" -c "CHECKPOINT"
  local waited=0
  while [ "$(psql_ -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'")" != 0 ] && [ $waited -lt 120 ]; do
    sleep 1; waited=$((waited + 1))
  done
}

# pgloader wants a URL; the embedded server listens on a unix socket.
SOCK_DIR=$(psql_ -c "SHOW unix_socket_directories" | cut -d, -f1)
PORT=$(psql_ -c "SHOW port")
PGL_URL="postgresql://$(psql_ -c 'SELECT current_user')@unix:$SOCK_DIR:$PORT/$(psql_ -c 'SELECT current_database()')"
PGL_CMD="$OUT/pgloader.load"
cat >"$PGL_CMD" <<EOF
LOAD CSV
  FROM '$PWD/$CSV' (region, origin, destination, datetime, datasource)
  INTO $PGL_URL?tablename=trips_natural (region, origin, destination, datetime, datasource)
  WITH skip header = 1, fields terminated by ',', fields optionally enclosed by '"', fields escaped by double-quote;
EOF

if [ -n "${BASELINE_PG_DIR:-}" ]; then
  [ -n "${BASELINE_TL:-}" ] || { echo "BASELINE_PG_DIR needs BASELINE_TL" >&2; exit 2; }
  BASELINE_URL=$(TRIPLOAD_PG_DIR=$BASELINE_PG_DIR "$BASELINE_TL" db url)
  TRIPLOAD_PG_DIR=$BASELINE_PG_DIR "$BASELINE_TL" db migrate >/dev/null
  psql "$BASELINE_URL" -Atq -c "CREATE TABLE IF NOT EXISTS trips_natural (region text, origin geometry(Point,4326), destination geometry(Point,4326), datetime timestamptz, datasource text)"
fi
declare -A T RSS CCPU SCPU
run_tripload() {
  local key=${1:-tripload}
  if [ "$key" = baseline ] && [ -n "${BASELINE_PG_DIR:-}" ]; then
    local main_dir=$TRIPLOAD_PG_DIR main_url=$URL
    export TRIPLOAD_PG_DIR=$BASELINE_PG_DIR; URL=$BASELINE_URL
    run_tripload_here "$key"
    export TRIPLOAD_PG_DIR=$main_dir; URL=$main_url
  else
    run_tripload_here "$key"
  fi
}
run_tripload_here() {
  local key=$1
  reset_db
  mkdir -p "$OUT/landing"; cp "$CSV" "$OUT/landing/in.csv"
  # The copy's dirty pages would otherwise be written back during the load.
  sync
  local s e s0; s0=$(server_cpu); s=$(date +%s.%N)
  local bin=$TL extra=(); [ "$key" = baseline ] && bin=$BASELINE_TL
  [ "$key" = tripload_no_rollups ] && extra=(--no-rollups)
  /usr/bin/time -f '%M %U %S' -o "$OUT/rss" "$bin" load "$OUT/landing/in.csv" --quiet --processed-dir "$OUT/processed" "${extra[@]}" >/dev/null 2>"$OUT/tripload.err" \
    || { cat "$OUT/tripload.err" >&2; exit 1; }
  e=$(date +%s.%N); rm -rf "$OUT/processed"
  SCPU[$key]+="$(calc "$(server_cpu) - $s0") "
  [ "$(psql_ -c 'SELECT count(*) FROM trips')" = "$ROWS" ] || { echo "tripload loaded a wrong row count" >&2; exit 1; }
  local rss u sy; read -r rss u sy <"$OUT/rss"
  T[$key]+="$(calc "$e - $s") "; RSS[$key]=$rss; CCPU[$key]+="$(calc "$u + $sy") "
}
run_psql_copy() {
  reset_db
  local s e; s=$(date +%s.%N)
  /usr/bin/time -f %M -o "$OUT/rss" psql "$URL" -v ON_ERROR_STOP=1 -q -c "\\copy trips_natural (region, origin, destination, datetime, datasource) FROM '$CSV' (FORMAT csv, HEADER true)"
  e=$(date +%s.%N)
  [ "$(psql_ -c 'SELECT count(*) FROM trips_natural')" = "$ROWS" ] || { echo "psql copy loaded a wrong row count" >&2; exit 1; }
  T[psql_copy]+="$(calc "$e - $s") "; RSS[psql_copy]=$(cat "$OUT/rss")
}
run_pgloader() {
  [ "$PGLOADER" = 1 ] && command -v pgloader >/dev/null || return 0
  reset_db
  local s e; s=$(date +%s.%N)
  /usr/bin/time -f %M -o "$OUT/rss" pgloader --quiet "$PGL_CMD" >"$OUT/pgloader.log" 2>&1 || { cat "$OUT/pgloader.log" >&2; exit 1; }
  e=$(date +%s.%N)
  [ "$(psql_ -c 'SELECT count(*) FROM trips_natural')" = "$ROWS" ] || { echo "pgloader loaded a wrong row count" >&2; exit 1; }
  T[pgloader]+="$(calc "$e - $s") "; RSS[pgloader]=$(cat "$OUT/rss")
}
run_ceiling() {
  reset_db
  local s e; s=$(date +%s.%N)
  psql_ -c "COPY trips (region_id, datasource_id, origin, destination, datetime, file_id) FROM '$BIN' (FORMAT binary)"
  e=$(date +%s.%N)
  T[server_binary_copy]+="$(calc "$e - $s") "; RSS[server_binary_copy]=0
}

# The ceiling's input: exactly the rows tripload encodes, exported by the server.
if [ ! -f "$BIN" ]; then
  run_tripload; T[tripload]=""; CCPU[tripload]=""; SCPU[tripload]=""
  psql_ -c "COPY (SELECT region_id, datasource_id, origin, destination, datetime, file_id FROM trips) TO '$BIN' (FORMAT binary)"
fi

for i in $(seq "$REPEATS"); do
  # Each round starts with the next method, so no method always runs right
  # after the same other one (autovacuum and checkpoints of the previous
  # run's rows land on whichever comes next).
  runs=("run_tripload" "run_tripload tripload_no_rollups")
  if [ -n "${BASELINE_TL:-}" ]; then runs+=("run_tripload baseline"); fi
  runs+=(run_psql_copy run_pgloader run_ceiling)
  for j in $(seq 0 $(( ${#runs[@]} - 1 ))); do
    ${runs[$(( (j + i - 1) % ${#runs[@]} ))]}
  done
  echo "round $i: tripload ${T[tripload]} no-rollups ${T[tripload_no_rollups]} baseline ${T[baseline]:-} psql ${T[psql_copy]} pgloader ${T[pgloader]:-} ceiling ${T[server_binary_copy]}" | tr -s ' ' >&2
done

TL_MED=$(echo "${T[tripload]}" | median)
{
echo "## End-to-end load, $ROWS rows ($(( BYTES / 1048576 )) MiB), median of $REPEATS alternating runs"
echo
echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB RAM; $(psql_ -c 'SELECT version()' | cut -d, -f1); PostGIS $(psql_ -c 'SELECT postgis_lib_version()'); TimescaleDB: $(psql_ -c "SELECT coalesce((SELECT extversion FROM pg_extension WHERE extname='timescaledb'), 'absent (plain table + BRIN)')")"
echo
echo "| method | median s | rows/s | MB/s | time vs tripload | client peak RSS |"
echo "|---|---:|---:|---:|---:|---:|"
for k in tripload tripload_no_rollups baseline psql_copy pgloader server_binary_copy; do
  [ -n "${T[$k]:-}" ] || continue
  m=$(echo "${T[$k]}" | median)
  printf "| %s | %.2f | %.0f | %.0f | %.2fx | %s |\n" "$k" "$m" "$(calc "$ROWS / $m")" "$(calc "$BYTES / 1000000 / $m")" "$(calc "$m / $TL_MED")" \
    "$( [ "${RSS[$k]}" = 0 ] && echo "n/a (server)" || echo "$(( ${RSS[$k]} / 1024 )) MiB")"
done
echo
echo "Rollup cost at load time (tripload vs tripload_no_rollups, same run): $(calc "($TL_MED / $(echo "${T[tripload_no_rollups]}" | median) - 1) * 100" | xargs printf '%.0f')% slower with them."
if [ -n "${T[baseline]:-}" ]; then
  echo
  echo "This build vs baseline ($BASELINE_TL), same run: $(calc "$TL_MED / $(echo "${T[baseline]}" | median)" | xargs printf '%.2f')x the baseline's time."
fi
echo
echo "Where the CPU goes (median CPU seconds per load; $(nproc) cores, so the wall time is bounded below by (client + server) / $(nproc)):"
echo
echo "| method | wall s | client CPU s | server CPU s | (client + server) / cores |"
echo "|---|---:|---:|---:|---:|"
for k in tripload tripload_no_rollups baseline; do
  [ -n "${T[$k]:-}" ] || continue
  c=$(echo "${CCPU[$k]}" | median); sv=$(echo "${SCPU[$k]}" | median)
  printf "| %s | %.2f | %.2f | %.2f | %.2f |\n" "$k" "$(echo "${T[$k]}" | median)" "$c" "$sv" "$(calc "($c + $sv) / $(nproc)")"
done
echo
echo "tripload: one transaction per file, rollups maintained, rejects with line numbers. psql \\copy: one transaction, aborts at the first bad row. pgloader: commits per batch (a failure leaves part of the file loaded)."
} | tee "$OUT/compare-$ROWS.md"
