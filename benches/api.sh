#!/usr/bin/env bash
# /api/weekly over HTTP (wrk, CONNS concurrent clients) side by side with the
# SQL function alone (pgbench, the same number of clients, the same calls):
# p50 latency of each, for a region and a 0.15° x 0.13° box by origin, on a
# database of ROWS generated trips. Needs wrk (apt-get install wrk).
# Usage: benches/api.sh [ROWS] [SECONDS] [CONNS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-10000000}; SECS=${2:-10}; CONNS=${3:-4}
OUT=bench-out
source benches/common.sh
bench_build
export TRIPLOAD_PG_DIR="$PWD/$OUT/pg-api"
bench_db
if [ "$(psql_ -c 'SELECT count(*) FROM trips')" != "$ROWS" ]; then
  empty_db
  mkdir -p "$OUT/land-api"
  "$TL" gen --rows "$ROWS" --seed 3 --out "$OUT/land-api/t.csv"
  "$TL" load -q "$OUT/land-api/t.csv" --processed-dir "$OUT/proc-api" >/dev/null
  rm -rf "$OUT/proc-api"
fi
PORT=18080
"$TL" serve --listen 127.0.0.1:$PORT --max-queries "$CONNS" >"$OUT/serve-api.log" 2>&1 &
SERVE=$!
trap 'kill $SERVE' EXIT
sleep 2
http_p50() { # path -> p50 ms
  wrk -t2 -c"$CONNS" -d"${SECS}s" --latency "http://127.0.0.1:$PORT$1" | awk '$1 == "50%" { v = $2; if (v ~ /us$/) { sub(/us$/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v) } else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1000 } print v }'
}
sql_p50() { # sql -> p50 ms
  local dir; dir=$(mktemp -d); echo "$1" >"$dir/q.sql"
  (cd "$dir" && pgbench -n -c"$CONNS" -j2 -T"$SECS" -f q.sql -l "$URL" >/dev/null 2>&1)
  cat "$dir"/pgbench_log.* | awk '{ print $3 / 1000 }' | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'
  rm -rf "$dir"
}
echo "## /api/weekly vs the SQL function, $ROWS rows, $CONNS concurrent clients, ${SECS} s each (p50 ms)"
echo
echo "| question | HTTP /api/weekly | SQL function alone | HTTP − SQL |"
echo "|---|---:|---:|---:|"
for q in "region|/api/weekly?region=Prague|SELECT * FROM weekly_trips_region('Prague')" \
         "box 0.15°×0.13° by origin|/api/weekly?bbox=14.35,50.0,14.5,50.13&by=origin|SELECT * FROM weekly_trips_bbox(14.35, 50.0, 14.5, 50.13, 'origin')"; do
  IFS='|' read -r name path sql <<<"$q"
  h=$(http_p50 "$path"); s=$(sql_p50 "$sql")
  printf "| %s | %.2f | %.2f | %+.2f |\n" "$name" "$h" "$s" "$(calc "$h - $s")"
done
