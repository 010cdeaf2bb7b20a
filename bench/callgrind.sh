#!/usr/bin/env bash
# Instructions per request of botbridge's translating path under callgrind:
#   bash bench/callgrind.sh [BINARY [LABEL]] [--requests N] [--warmup N] [--connections N] [--out FILE]
# BINARY defaults to target/release/botbridge, built here if missing. Installs valgrind and nginx
# from the distribution's packages if missing, then runs bench/callgrind.py (see there). Repeats to
# about 0.1%, so two binaries (e.g. from two worktrees) compare to the instruction.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
need=()
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ $# -eq 0 ] || [[ "$1" == -* ]]; then
  bin="$here/../target/release/botbridge"
  [ -x "$bin" ] || (cd "$here/.." && cargo build --release --locked --bin botbridge)
  set -- "$bin" "$@"
fi
exec python3 "$here/callgrind.py" "$@"
