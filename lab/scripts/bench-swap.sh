#!/usr/bin/env bash
# Swap store vs a raw slot file: pages/s for clustered writes (16 and 32 pages per transaction)
# and random-order reads, measured in the same run, with the ratios against the issue's targets
# (both >= 0.5x raw). Extra arguments go to the benchmark (--pages N --runs N --page-size B
# --sync OFF|NORMAL --checkpoint PAGES --inline-checkpoint --mmap-mib M --no-ado --dir DIR).
set -euo pipefail
cd "$(dirname "$0")/../.."
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
CONFIG=${CONFIG:-Release}
# Build only the benchmark and the store (never the whole solution: others may be building it).
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! dotnet build swapstore/bench/Swapstore.Bench.csproj -c "$CONFIG" -nologo -v:q -clp:ErrorsOnly >"$log" 2>&1; then
  cat "$log" >&2
  exit 1
fi
dotnet "swapstore/bench/bin/$CONFIG/net10.0/Swapstore.Bench.dll" "$@"
