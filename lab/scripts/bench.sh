#!/usr/bin/env bash
# make bench: a 256 MiB lab file touched page by page (one byte per 4 KiB page) by
# build/touch, in several configurations, interleaved, RUNS times each; medians and ratios
# from this one invocation (the machines are noisy: compare only within a run).
set -euo pipefail
source "$(dirname "$0")/scratch.sh" bench
TOUCH="$ROOT/build/touch" FLOOR="$ROOT/build/uffd-floor"
RUNS=${RUNS:-5}
SIZE_MB=${SIZE_MB:-256}

head -c $((SIZE_MB * 1024 * 1024)) /dev/urandom > "$BACK/big.dat"
"$LAB" mount "$BACK" "$MNT" >/dev/null

# Each configuration: its key, what it is, its command.
declare -A NAME CMD
order=()
config() { order+=("$1"); NAME[$1]=$2; CMD[$1]=$3; }
config native "native file, kernel page cache (mmap, no lab)" "$TOUCH $BACK/big.dat"
config fuse "lab mount without lab run (kernel's FUSE mmap path)" "$TOUCH $MNT/big.dat"
config floor "minimal C uffd handler (in-process thread, the floor)" "$FLOOR $BACK/big.dat"
config floorpin "minimal C uffd handler, pinned to one vCPU" "taskset -c 0 $FLOOR $BACK/big.dat"
config labpriv "lab run, MAP_PRIVATE (freebsd resolver)" "$LAB run --mount $MNT --stats -- $TOUCH $MNT/big.dat"
config labshared "lab run, MAP_SHARED (memfd page cache)" "$LAB run --mount $MNT --stats -- $TOUCH $MNT/big.dat --shared"

declare -A RES SUM FAULTS
for ((i = 1; i <= RUNS; i++)); do
  for k in "${order[@]}"; do
    out=$(${CMD[$k]} 2>"$WORK/stats")
    f=$(awk '$1 == "v_vm_faults" {print $2}' "$WORK/stats")
    grep -q "^lab stats" "$WORK/stats" && FAULTS[$k]=${f:-0}
    us=$(sed -nE 's/.*us_per_page=([0-9.]+).*/\1/p' <<<"$out")
    sum=$(sed -nE 's/.*sum=([0-9]+).*/\1/p' <<<"$out")
    RES[$k]="${RES[$k]:-} $us"
    if [ -n "${SUM[ref]:-}" ] && [ "$sum" != "${SUM[ref]}" ]; then echo "checksum mismatch in $k: $sum vs ${SUM[ref]}" >&2; exit 1; fi
    SUM[ref]=$sum
  done
done

median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo "touch, one byte per page, ${SIZE_MB} MiB ($((SIZE_MB * 256)) pages), median of $RUNS interleaved runs; checksums equal in every run"
printf '%-58s %10s %8s   %s\n' "configuration" "us/page" "faults" "runs"
declare -A MED
for k in "${order[@]}"; do
  MED[$k]=$(median "${RES[$k]}")
  printf '%-58s %10s %8s  %s\n' "${NAME[$k]}" "${MED[$k]}" "${FAULTS[$k]:-}" "${RES[$k]}"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }'; }
echo
echo "faults: uffd faults the lab served in the last run (fewer than pages: read-ahead and prefault install"
echo "neighbours; the shared mapping's pages already sit in the lab's page cache and the kernel maps them)."
echo "ratios (same run):"
echo "  lab run private / minimal C handler : $(ratio "${MED[labpriv]}" "${MED[floor]}")   (pinned handler: $(ratio "${MED[labpriv]}" "${MED[floorpin]}"))"
echo "  lab run private / kernel FUSE mmap  : $(ratio "${MED[labpriv]}" "${MED[fuse]}")"
echo "  lab run private / native            : $(ratio "${MED[labpriv]}" "${MED[native]}")"
echo "  lab run shared  / kernel FUSE mmap  : $(ratio "${MED[labshared]}" "${MED[fuse]}")"
echo "  lab run shared  / native            : $(ratio "${MED[labshared]}" "${MED[native]}")"
