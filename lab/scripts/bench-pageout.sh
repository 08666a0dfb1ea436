#!/usr/bin/env bash
# Paging end to end: build/swaptouch writes, then reads in order, then reads in a random order
# every page of SIZE_MB MiB of anonymous lab memory under `lab run`, with and without a
# resident limit (LIMIT_MB), each design in turn, interleaved RUNS times. Reported: us per page
# and pages/s per pass, the pages paged out and in, and the issue's target: a swap-in (the seq
# pass under the limit) within 1.5x of a plain zero-fill fault (the fill pass without a limit).
set -euo pipefail
source "$(dirname "$0")/scratch.sh" pageout
TOUCH="$ROOT/build/swaptouch"
RUNS=${RUNS:-3}
SIZE_MB=${SIZE_MB:-512}
LIMIT_MB=${LIMIT_MB:-64}
DESIGNS=${DESIGNS:-freebsd dragonfly uvm2000 uvm2019}
"$LAB" mount "$BACK" "$MNT" >/dev/null

declare -A RES
get() { sed -nE "s/.*$1=([0-9.]+).*/\\1/p" <<<"$2"; }
stat_of() { awk -v k="$1" '$1 == k {print $2}' "$WORK/stats"; }
for ((i = 1; i <= RUNS; i++)); do
  for vm in $DESIGNS; do
    for mode in plain limited; do
      extra=(); [ "$mode" = limited ] && extra=(--resident-limit "${LIMIT_MB}M")
      out=$("$LAB" run --mount "$MNT" --vm "$vm" --stats "${extra[@]}" -- "$TOUCH" "$SIZE_MB" 2>"$WORK/stats") || {
        echo "swaptouch failed under $vm $mode: $out" >&2; cat "$WORK/stats" >&2; exit 1; }
      for pass in fill seq rand; do RES[$vm.$mode.$pass]="${RES[$vm.$mode.$pass]:-} $(get ${pass}_us "$out")"; done
      RES[$vm.$mode.out]="${RES[$vm.$mode.out]:-} $(stat_of pageouts)"
      RES[$vm.$mode.in]="${RES[$vm.$mode.in]:-} $(stat_of pageins)"
    done
  done
done

median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
pps() { awk -v u="$1" 'BEGIN { if (u > 0) printf "%.0f", 1e6 / u; else print "n/a" }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }'; }
echo "swaptouch ${SIZE_MB} MiB ($((SIZE_MB * 256)) pages), limit ${LIMIT_MB} MiB; medians of $RUNS interleaved runs; us/page (pages/s)"
printf '%-10s %-8s %20s %20s %20s %10s %10s\n' design mode "fill (write)" "seq read" "random read" pageouts pageins
for vm in $DESIGNS; do
  for mode in plain limited; do
    row=()
    for pass in fill seq rand; do m=$(median "${RES[$vm.$mode.$pass]}"); row+=("$m ($(pps "$m"))"); done
    printf '%-10s %-8s %20s %20s %20s %10s %10s\n' "$vm" "$mode" "${row[@]}" "$(median "${RES[$vm.$mode.out]}")" "$(median "${RES[$vm.$mode.in]}")"
  done
done
echo
echo "target: swap-in (seq read, limited) within 1.5x of a zero-fill fault (fill, plain), same run:"
for vm in $DESIGNS; do
  si=$(median "${RES[$vm.limited.seq]}") zf=$(median "${RES[$vm.plain.fill]}") rr=$(median "${RES[$vm.limited.rand]}")
  echo "  $vm: seq swap-in / zero-fill = $(ratio "$si" "$zf"); random swap-in / zero-fill = $(ratio "$rr" "$zf")"
done
