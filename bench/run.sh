#!/usr/bin/env bash
# botbridge against nginx and haproxy, side by side in one run: `bash bench/run.sh`.
# Installs nginx, haproxy and wrk from the distribution's packages if missing, builds the release
# binary, then runs bench/bench.py (see there for what is measured). Extra arguments go to bench.py,
# e.g. `bash bench/run.sh --seconds 20 --rounds 3`.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)   # the Redis-backed limit row
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cargo build --release --locked --bin botbridge --example passthrough_floor
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec python3 bench/bench.py --binary target/release/botbridge "$@"
