#!/usr/bin/env bash
# Installs what tripload needs on a fresh Debian/Ubuntu machine and is a no-op
# when it is already there: PostgreSQL server binaries and PostGIS for them.
set -euo pipefail

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

major=""
for d in /usr/lib/postgresql/*/bin; do
  [ -x "$d/postgres" ] && major=$(basename "$(dirname "$d")")
done
if [ -z "$major" ]; then
  echo "setup: no PostgreSQL server found; installing postgresql" >&2
  sudo_if_needed apt-get update -q
  sudo_if_needed apt-get install -y -q postgresql
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/postgres" ] && major=$(basename "$(dirname "$d")")
  done
fi
if [ ! -f "/usr/share/postgresql/$major/extension/postgis.control" ]; then
  echo "setup: installing PostGIS for PostgreSQL $major (postgresql-$major-postgis-3)" >&2
  sudo_if_needed apt-get update -q
  sudo_if_needed apt-get install -y -q "postgresql-$major-postgis-3"
fi
# The mail tests talk to a real SMTP server (aiosmtpd), run by Debian's python3.
if [ "${TRIPLOAD_SETUP_TESTS:-0}" = 1 ] && ! /usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null; then
  echo "setup: installing python3-aiosmtpd (SMTP server for the mail tests)" >&2
  sudo_if_needed apt-get update -q
  sudo_if_needed apt-get install -y -q python3-aiosmtpd
fi
# The TLS test makes a self-signed server certificate with openssl.
if [ "${TRIPLOAD_SETUP_TESTS:-0}" = 1 ] && ! command -v openssl >/dev/null; then
  echo "setup: installing openssl (certificate for the TLS test)" >&2
  sudo_if_needed apt-get update -q
  sudo_if_needed apt-get install -y -q openssl
fi
# The dashboard test drives Debian's headless Chromium over WebDriver.
if [ "${TRIPLOAD_SETUP_TESTS:-0}" = 1 ] && ! { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }; then
  echo "setup: installing chromium and chromium-driver (the dashboard test)" >&2
  sudo_if_needed apt-get update -q
  sudo_if_needed apt-get install -y -q chromium chromium-driver
fi
# The API fuzz test runs schemathesis (PyPI, pinned) from a virtualenv of
# Debian's python3; tests/serve_fuzz.rs looks for it at the same place.
schemathesis_version=4.32.5
venv="${XDG_CACHE_HOME:-$HOME/.cache}/tripload/venv"
if [ "${TRIPLOAD_SETUP_TESTS:-0}" = 1 ] \
  && [ "$("$venv/bin/schemathesis" --version 2>/dev/null)" != "schemathesis, version $schemathesis_version" ]; then
  echo "setup: installing schemathesis $schemathesis_version into $venv (the API fuzz test)" >&2
  if ! dpkg -s python3-venv >/dev/null 2>&1; then
    sudo_if_needed apt-get update -q
    sudo_if_needed apt-get install -y -q python3-venv
  fi
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$schemathesis_version"
fi
if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found: install the Rust toolchain (https://rustup.rs)" >&2
  exit 1
fi
echo "setup: PostgreSQL $major with PostGIS is ready" >&2
