# tripload: build the release binary, ship it on a slim Debian with nothing
# else. The database is an external service (see docker-compose.yml), so the
# image carries no PostgreSQL binaries: `tripload db start` (the embedded
# server) does not work in it, and must not be needed. Without DATABASE_URL
# every database command fails with a hint.

# ---------------------------------------------------------------- build ----
# Rust 1.88 is the oldest the locked dependencies accept (icu_* via lettre's
# idna); 1.95.0 is the toolchain the project is developed and tested with.
FROM rust:1.95.0-bookworm AS build
WORKDIR /src

# Dependencies first, in their own layer: a dummy crate with the real
# manifests, rebuilt only when Cargo.toml or Cargo.lock change. Cargo.toml
# declares [[bench]] targets, whose files must exist for the manifest to load.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/kernels.rs \
 && echo 'fn main() {}' > benches/load_e2e.rs \
 && cargo build --release --locked \
 && rm -rf src benches

# The real sources. sql/ is compiled into the binary (include_str! in
# src/db/schema.rs), so it is a build input too. COPY keeps the files' own mtimes,
# which may be older than the dummy build: touch the crate roots so cargo
# rebuilds the crate itself (the dependencies stay cached).
COPY src ./src
COPY sql ./sql
COPY benches ./benches
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked \
 && strip --strip-debug target/release/tripload \
 && install -m 0755 target/release/tripload /usr/local/bin/tripload \
 && tripload --version

# -------------------------------------------------------------- runtime ----
# The binary links only libc, libm and libgcc_s (tokio-postgres and rustls
# are pure Rust: no libpq, no OpenSSL). ca-certificates for smtps:// report
# servers and anything else that wants the system trust store.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# A fixed, unprivileged uid/gid so bind-mounted data directories can be
# chowned to it (docker-compose.yml may run the container as another uid).
RUN groupadd --system --gid 10001 tripload \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /data --shell /usr/sbin/nologin tripload \
 && mkdir -p /data/landing /data/processing /data/processed /data/failed \
 && chown -R tripload:tripload /data

COPY --from=build /usr/local/bin/tripload /usr/local/bin/tripload

USER tripload:tripload
WORKDIR /data

# `tripload watch` stops taking files on SIGTERM and finishes those in flight
# (give it time: `docker stop -t`, compose's stop_grace_period).
STOPSIGNAL SIGTERM

# Healthy when the database is reachable and the schema is in place:
# `tripload status` connects, applies pending migrations (a no-op once done),
# prints the latest file's state and exits 0; it exits 2 when the database
# cannot be reached or prepared.
HEALTHCHECK --interval=60s --timeout=30s --start-period=30s --retries=3 \
  CMD ["tripload", "status", "--limit", "1"]

ENTRYPOINT ["tripload"]
# Files dropped into /data/landing are loaded; processing/, processed/ and
# failed/ are created beside it, in /data.
CMD ["watch", "/data/landing"]
