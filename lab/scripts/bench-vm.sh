#!/usr/bin/env bash
# make bench (part): the VM resolvers alone, no kernel and no I/O. Faults per second
# for resident, zero-fill, copy-on-write and shadow-chain walks (before and after
# collapse), managed bytes per fault and per resident page, and the targets met or
# missed. Arguments go to the benchmark (--quick, --pages N, --rounds N, --design NAME).
# With --strict the exit status is 1 when a target is missed.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
exec dotnet run -c Release --project "$ROOT/lab/bench/VmBench/VmBench.csproj" -- "$@"
