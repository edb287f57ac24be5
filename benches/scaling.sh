#!/usr/bin/env bash
# Scaling curves of `tripload load` on one machine, one run:
#   - rows/s by file size (1M, 5M, 15M rows; one file, one transaction);
#   - rows/s by --jobs (1, 2, 4) on 4 files of 2M rows (one connection and
#     transaction per file).
# The third curve — load time of each further file as the table grows to
# 100M rows — is in benches/scale-100m.sh (docs/scale-100m.md).
# Each point is the median of REPEATS runs (alternating); the table is
# truncated before each run. Usage: benches/scaling.sh [REPEATS]
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS=${1:-3}
OUT=bench-out
mkdir -p "$OUT/scaling"
chmod 755 "$OUT"
source benches/common.sh
bench_build
export TRIPLOAD_PG_DIR="$PWD/$OUT/pg"
bench_db
psql_ -c "DROP INDEX IF EXISTS trips_origin_gist, trips_destination_gist"
reset_db() { empty_db; psql_ -c "CHECKPOINT"; }

# Loads the files given, returns seconds; checks the row count.
load() {
  local rows=$1 jobs=$2; shift 2
  reset_db
  rm -rf "$OUT/scaling/in" "$OUT/scaling/done"; mkdir -p "$OUT/scaling/in"
  for f in "$@"; do ln "$f" "$OUT/scaling/in/$(basename "$f")"; done
  local s e; s=$(date +%s.%N)
  "$TL" load "$OUT/scaling/in" --jobs "$jobs" --quiet --processed-dir "$OUT/scaling/done" >/dev/null
  e=$(date +%s.%N)
  [ "$(psql_ -c 'SELECT count(*) FROM trips')" = "$rows" ] || { echo "wrong row count" >&2; exit 1; }
  calc "$e - $s"
}
gen() { [ -f "$2" ] || "$TL" gen --rows "$1" --seed "$3" --out "$2"; }

declare -A T
for m in 1 5 15; do gen $((m * 1000000)) "$OUT/scaling/size-${m}M.csv" $((700 + m)); done
for i in 1 2 3 4; do gen 2000000 "$OUT/scaling/part-$i.csv" $((800 + i)); done
for r in $(seq "$REPEATS"); do
  for m in 1 5 15; do T[size$m]+="$(load $((m * 1000000)) 1 "$OUT/scaling/size-${m}M.csv") "; done
  for j in 1 2 4; do T[jobs$j]+="$(load 8000000 "$j" "$OUT"/scaling/part-*.csv) "; done
  echo "round $r done" >&2
done
{
echo "## Scaling, median of $REPEATS runs"
echo
echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB RAM (shared); $(psql_ -c 'SELECT version()' | cut -d, -f1); embedded server on the same machine."
echo
echo "| file size | seconds | rows/s |"
echo "|---|---:|---:|"
for m in 1 5 15; do
  t=$(echo "${T[size$m]}" | median)
  printf "| %sM rows (%d MB) | %.2f | %.0f |\n" "$m" "$(( $(stat -c %s "$OUT/scaling/size-${m}M.csv") / 1000000 ))" "$t" "$(calc "$m * 1000000 / $t")"
done
echo
echo "| --jobs (4 files × 2M rows) | seconds | rows/s |"
echo "|---|---:|---:|"
for j in 1 2 4; do
  t=$(echo "${T[jobs$j]}" | median)
  printf "| %d | %.2f | %.0f |\n" "$j" "$t" "$(calc "8000000 / $t")"
done
} | tee "$OUT/scaling.md"
