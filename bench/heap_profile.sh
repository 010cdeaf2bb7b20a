#!/usr/bin/env bash
# Where botbridge's memory per idle connection goes: `bash bench/heap_profile.sh`.
# Builds botbridge on the system allocator (massif sees only malloc) into target/sysalloc, then runs
# bench/heap_profile.py: 1,000 idle keep-alive connections under valgrind's massif, and a table of
# the bytes each allocation site holds per connection.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v valgrind >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends valgrind >/dev/null
fi
CARGO_TARGET_DIR=target/sysalloc cargo build --release --locked --no-default-features --bin botbridge
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec python3 bench/heap_profile.py --binary target/sysalloc/release/botbridge "$@"
