# Shared by the bench scripts (sourced from the repository root).

# Installs what is missing, builds the release binary, sets $TL.
bench_build() {
  scripts/setup.sh
  cargo build --release --quiet
  TL="$PWD/target/release/tripload"
}

# The embedded database in $TRIPLOAD_PG_DIR: started, migrated, $URL set.
bench_db() {
  unset DATABASE_URL
  URL=$("$TL" db url)
  "$TL" db migrate >/dev/null
}

psql_() { psql "$URL" -v ON_ERROR_STOP=1 -Atq "$@"; }
calc() { awk "BEGIN { print $* }"; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
