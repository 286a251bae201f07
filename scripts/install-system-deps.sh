#!/usr/bin/env bash
# Installs the Debian packages the test suite drives for real, when root and missing.
set -euo pipefail
want=()
command -v slurmctld >/dev/null 2>&1 || want+=(slurm-wlm)
command -v munged >/dev/null 2>&1 || want+=(munge)
command -v chromium >/dev/null 2>&1 || want+=(chromium)
# PostgreSQL server binaries (initdb, pg_ctl) and the `postgres` user the tests run them as.
{ compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || command -v initdb >/dev/null 2>&1; } && id postgres >/dev/null 2>&1 \
  || want+=(postgresql)
if [ ${#want[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${want[*]} (run as root, or install them: apt-get install -y ${want[*]})" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
