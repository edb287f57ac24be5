# Shared by the bench scripts (sourced from the repository root).

# Installs what is missing, builds the release binary, sets $TL (a $TL set
# by the caller is used as it is, unbuilt).
bench_build() {
  scripts/setup.sh
  if [ -n "${TL:-}" ]; then return; fi
  cargo build --release --quiet
  TL="${CARGO_TARGET_DIR:-$PWD/target}/release/tripload"
}

# The embedded database in $TRIPLOAD_PG_DIR: started, migrated, $URL set.
bench_db() {
  unset DATABASE_URL
  URL=$("$TL" db url)
  "$TL" db migrate >/dev/null
}

psql_() { psql "$URL" -v ON_ERROR_STOP=1 -Atq "$@"; }

# Empties every table a load writes.
empty_db() {
  psql_ -c "TRUNCATE trips, load_files, rollup_region_week, rollup_region_source, rollup_cell_week, rollup_cell_points, cell_points_pending, rollup_uncompacted"
}
calc() { awk "BEGIN { print $* }"; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# CPU seconds used so far by the embedded server in $TRIPLOAD_PG_DIR: the
# postmaster, its live children, and the children it has reaped (ended
# backends), from /proc. A difference of two readings is the server's CPU for
# what ran in between.
server_cpu() {
  local pidfile pm
  pidfile=$(find "$TRIPLOAD_PG_DIR" -name postmaster.pid -print -quit)
  pm=$(head -1 "$pidfile")
  {
    sed 's/^.*) //' "/proc/$pm/stat" | awk '{ print $12 + $13 + $14 + $15 }'
    for c in $(cat "/proc/$pm/task/$pm/children" 2>/dev/null); do
      [ -r "/proc/$c/stat" ] && sed 's/^.*) //' "/proc/$c/stat" | awk '{ print $12 + $13 }'
    done
  } | awk -v hz="$(getconf CLK_TCK)" '{ s += $1 } END { printf "%.2f", s / hz }'
}
