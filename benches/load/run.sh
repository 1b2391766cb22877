#!/usr/bin/env bash
# The load benchmark in one command: installs wrk if missing, builds the release
# binaries (weir, the canned upstream, the bare Pingora hop, the driver) and runs it.
#   benches/load/run.sh            full run (10 s cells, 5-minute soak), writes benches/RESULTS.md
#   benches/load/run.sh --quick    short cells and soak, prints only
#   benches/load/run.sh --quick --scale-out-only   only the Redis/PostgreSQL cells
#   benches/load/run.sh --half-soak 1800   only the 30-minute soak at half saturation
#                                          (RSS, fds, database size); appends to benches/RESULTS.md
set -euo pipefail
cd "$(dirname "$0")/../.."
.ci/deps
if ! command -v wrk >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --features bench-tools --bin weir --bin weir-bench-upstream --bin weir-bench-bare --bin weir-load
out=()
if [[ " $* " == *" --half-soak "* ]]; then out=(--append benches/RESULTS.md)
elif [[ " $* " != *" --quick "* ]]; then out=(--out benches/RESULTS.md); fi
ulimit -n 65536 2>/dev/null || true
exec target/release/weir-load "${out[@]}" "$@"
