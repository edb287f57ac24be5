#!/usr/bin/env bash
# Effect of the server's bulk-load settings on `tripload load`, side by side
# in one run: the embedded cluster's settings vs PostgreSQL's defaults for the
# WAL/checkpoint settings (all reloadable, so one server, alternating runs).
#   ours:      max_wal_size=8GB, checkpoint_timeout=30min, wal_compression=on
#   defaults:  max_wal_size=1GB, checkpoint_timeout=5min,  wal_compression=off
#   ours+async: ours with synchronous_commit=off (one commit per file: it
#               should not matter, and it risks losing a committed file)
# Usage: benches/settings.sh [ROWS] [REPEATS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-5000000}
REPEATS=${2:-3}
OUT=bench-out
mkdir -p "$OUT/settings"
source benches/common.sh
bench_build
export TRIPLOAD_PG_DIR="$PWD/$OUT/pg"
bench_db
CSV="$OUT/settings/trips-$ROWS.csv"
[ -f "$CSV" ] || "$TL" gen --rows "$ROWS" --seed 3 --out "$CSV"
psql_ -c "DROP INDEX IF EXISTS trips_origin_gist, trips_destination_gist"

apply() {
  case $1 in
    ours) psql_ -c "ALTER SYSTEM RESET max_wal_size" -c "ALTER SYSTEM RESET checkpoint_timeout" -c "ALTER SYSTEM RESET wal_compression" -c "ALTER SYSTEM RESET synchronous_commit" ;;
    defaults) psql_ -c "ALTER SYSTEM SET max_wal_size = '1GB'" -c "ALTER SYSTEM SET checkpoint_timeout = '5min'" -c "ALTER SYSTEM SET wal_compression = off" -c "ALTER SYSTEM RESET synchronous_commit" ;;
    async) psql_ -c "ALTER SYSTEM RESET max_wal_size" -c "ALTER SYSTEM RESET checkpoint_timeout" -c "ALTER SYSTEM RESET wal_compression" -c "ALTER SYSTEM SET synchronous_commit = off" ;;
  esac
  psql_ -c "SELECT pg_reload_conf()" >/dev/null
}
declare -A T W
run() {
  apply "$1"
  empty_db
  psql_ -c "CHECKPOINT"
  local w0 s e; w0=$(psql_ -c "SELECT pg_current_wal_lsn()")
  cp "$CSV" "$OUT/settings/in.csv"
  s=$(date +%s.%N)
  "$TL" load "$OUT/settings/in.csv" --quiet --processed-dir "$OUT/settings/done" >/dev/null
  e=$(date +%s.%N); rm -rf "$OUT/settings/done"
  T[$1]+="$(calc "$e - $s") "
  W[$1]=$(psql_ -c "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$w0') / 1048576")
}
for r in $(seq "$REPEATS"); do run ours; run defaults; run async; echo "round $r" >&2; done
apply ours
OURS=$(echo "${T[ours]}" | median)
{
echo "## Server settings and load time, $ROWS rows ($(( $(stat -c %s "$CSV") / 1000000 )) MB), median of $REPEATS alternating runs"
echo
echo "| settings | seconds | rows/s | WAL written (MB) | time vs ours |"
echo "|---|---:|---:|---:|---:|"
for k in ours defaults async; do
  t=$(echo "${T[$k]}" | median)
  printf "| %s | %.2f | %.0f | %.0f | %.2fx |\n" "$k" "$t" "$(calc "$ROWS / $t")" "${W[$k]}" "$(calc "$t / $OURS")"
done
} | tee "$OUT/settings.md"
