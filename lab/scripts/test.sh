#!/usr/bin/env bash
# Runs every test project and ends with one line: "N passed, N failed".
# Kernel-dependent tests fail instead of skipping when LAB_REQUIRE_KERNEL=1.
set -uo pipefail
CONFIG=${1:-Release}
cd "$(dirname "$0")/../.."
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
# Every test project: the property tests, then tests/* (unit first, the end-to-end Lab.Tests last).
mapfile -t projects < <(ls props/*.csproj 2>/dev/null; ls tests/*/*.csproj | grep -v '/Lab.Tests/'; ls tests/Lab.Tests/*.csproj)
passed=0; failed=0; broken=0
for p in "${projects[@]}"; do
  out=$(mktemp)
  echo "== $p"
  dotnet test "$p" -c "$CONFIG" --no-build -nologo -v:q --logger "console;verbosity=normal" 2>&1 | tee "$out" \
    | grep -E "^\s+(Failed|Skipped) |Error Message|Expected|Actual|^\s+at Lab|Total tests|^ +(Passed|Failed|Skipped): " | head -300
  rc=${PIPESTATUS[0]}
  # The block after "Total tests: N": "     Passed: N", "     Failed: N" (absent when 0).
  if ! grep -qE "^Total tests: [0-9]+" "$out"; then
    echo "!! $p: no test summary (exit $rc)"; broken=$((broken+1))
  else
    f=$(sed -nE 's/^ +Failed: ([0-9]+)$/\1/p' "$out" | tail -1); s=$(sed -nE 's/^ +Passed: ([0-9]+)$/\1/p' "$out" | tail -1)
    f=${f:-0}; s=${s:-0}
    passed=$((passed+s)); failed=$((failed+f))
    [ "$rc" -ne 0 ] && [ "$f" -eq 0 ] && { echo "!! $p: dotnet test exited $rc"; broken=$((broken+1)); }
  fi
  rm -f "$out"
done
failed=$((failed+broken))
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
