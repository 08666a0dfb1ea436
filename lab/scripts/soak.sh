#!/usr/bin/env bash
# make soak: real programs under the lab for SOAK_MINUTES (default 30), SOAK_JOBS at once
# (default 3), on one mount, under every design, some under --resident-limit. Each program's
# output is compared with what it prints natively. Every SOAK_SAMPLE_SECONDS (default 60) the
# daemon's RSS, open descriptors, threads and swap-store size (database + WAL) are sampled;
# the table is printed at the end. Fails on any program failure, or if the daemon grows: its
# idle footprint at the end (programs' files deleted, after the idle trim) over the one after
# warm-up (RSS 1.5x, descriptors +16, swap store +1 MiB), or busy RSS/descriptors in the last
# third of the samples all over 1.5x the highest of the first third.
# SOAK_PROGRAMS: the programs to mix (default: all of them that are installed).
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
LAB=$ROOT/build/lab
export LAB_PRELOAD=$ROOT/build/liblabpreload.so
MINUTES=${SOAK_MINUTES:-30}
JOBS=${SOAK_JOBS:-3}
SAMPLE=${SOAK_SAMPLE_SECONDS:-60}
DESIGNS=(freebsd dragonfly uvm2000 uvm2019)
PROGRAMS=${SOAK_PROGRAMS:-"python sort sqlite git gcc churn swapcheck mmapcheck stressng fio"}

W=$(mktemp -d /tmp/labsoak-XXXXXX)
mkdir -p "$W/backing" "$W/mnt" "$W/native" "$W/fail"
DAEMON=; WORKERS=()
cleanup() {
    for p in "${WORKERS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${WORKERS[@]}"; do wait "$p" 2>/dev/null; done
    if [ -n "$DAEMON" ] && kill -0 "$DAEMON" 2>/dev/null; then
        kill -TERM "$DAEMON"; for _ in $(seq 100); do kill -0 "$DAEMON" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$DAEMON" 2>/dev/null && kill -KILL "$DAEMON"
    fi
    grep -qs " $W/mnt " /proc/self/mountinfo && umount -l "$W/mnt"
    [ -n "${SOAK_KEEP:-}" ] && echo "soak: kept $W" || rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$LAB" mount --foreground "$W/backing" "$W/mnt" >"$W/daemon.out" 2>"$W/daemon.log" &
DAEMON=$!
for _ in $(seq 150); do grep -q '^ready' "$W/daemon.out" 2>/dev/null && break; sleep 0.2; done
grep -q '^ready' "$W/daemon.out" || { echo "soak: the daemon did not start"; cat "$W/daemon.log"; exit 1; }

have() { command -v "$1" >/dev/null 2>&1; }

# ---- the programs: each "prog_NAME DIR" prints something deterministic -------------------------

prog_python() {
    python3 - "$1" <<'PY'
import hashlib, sys, os
blocks = [bytes((i * 31 + j) % 251 for j in range(4096)) * 64 for i in range(48)]   # 48 x 256 KiB
h = hashlib.sha256()
for b in blocks: h.update(b)
big = bytearray(24 << 20)                  # one large malloc: lab memory under the shim
for i in range(0, len(big), 4096): big[i] = i // 4096 % 256
d = {i: hashlib.md5(str(i).encode()).hexdigest() for i in range(20000)}
path = os.path.join(sys.argv[1], "py.bin")
with open(path, "wb") as f: f.write(b"".join(blocks[:8]))
with open(path, "rb") as f: back = hashlib.sha256(f.read()).hexdigest()
print(h.hexdigest(), hashlib.sha256(big).hexdigest(), len(d), d[12345], back)
PY
}
prog_sort() {
    awk 'BEGIN { x = 12345; for (i = 0; i < 200000; i++) { x = (x * 1103515245 + 12345) % 2147483648; print x % 1000003, i } }' > "$1/in.txt"
    sort -n -k1,1 -k2,2 "$1/in.txt" > "$1/out.txt" && sha256sum < "$1/out.txt"
}
prog_sqlite() {
    rm -f "$1/t.db" "$1/t.db-wal" "$1/t.db-shm"
    sqlite3 "$1/t.db" <<'SQL'
PRAGMA journal_mode = WAL;
CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT, c REAL);
WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 50000)
INSERT INTO t SELECT i, hex(printf('%08d', i * 7919 % 100003)), i * 0.5 FROM s;
CREATE INDEX tb ON t(b);
SELECT count(*), sum(a), round(sum(c), 1), min(b), max(b) FROM t;
UPDATE t SET c = c * 2 WHERE a % 3 = 0;
SELECT round(sum(c), 1) FROM t;
PRAGMA integrity_check;
SQL
}
prog_git() {
    rm -rf "$1/repo"; mkdir -p "$1/repo" && cd "$1/repo" || return 1
    for i in $(seq 40); do seq "$i" 400 > "f$i.txt"; done
    git init -q . && git add . && git -c user.name=soak -c user.email=soak@lab commit -qm one \
        && seq 5 > f1.txt && git add f1.txt && git -c user.name=soak -c user.email=soak@lab commit -qm two \
        && git rev-parse 'HEAD^{tree}' && git log --format=%s | tr '\n' ' ' && echo && git fsck --no-progress 2>&1 | head -3
}
prog_gcc() {
    cat > "$1/p.c" <<'C'
#include <stdio.h>
#include <stdlib.h>
int main(void) {
    unsigned n = 1 << 20, *a = malloc(n * sizeof *a), h = 0;
    for (unsigned i = 0; i < n; i++) a[i] = i * 2654435761u;
    for (unsigned i = 0; i < n; i++) h = h * 31 + a[(i * 7) % n];
    printf("%u\n", h);
    return 0;
}
C
    gcc -O2 -o "$1/p" "$1/p.c" && "$1/p"
}
prog_churn() { "$ROOT/build/churn" "$1/churn.dat" 8; }
prog_swapcheck() { "$ROOT/build/swapcheck" 6144 touch; }
prog_mmapcheck() { "$ROOT/build/mmapcheck" --anon 64; }
prog_stressng() { stress-ng --vm 2 --vm-bytes 32M --vm-method all --verify -t 10s --quiet >/dev/null 2>&1 && echo ok; }
prog_fio() {
    fio --name=soak --directory="$1" --ioengine=mmap --rw=randwrite --bs=4k --size=16M --verify=crc32c \
        --do_verify=1 --output=/dev/null >/dev/null 2>&1 && echo ok
}
export -f prog_python prog_sort prog_sqlite prog_git prog_gcc prog_churn prog_swapcheck prog_mmapcheck prog_stressng prog_fio
export ROOT

AVAILABLE=()
for p in $PROGRAMS; do
    case $p in
        python) have python3 ;; sqlite) have sqlite3 ;; git) have git ;; gcc) have gcc ;;
        stressng) have stress-ng ;; fio) have fio ;; *) true ;;
    esac && AVAILABLE+=("$p")
done
echo "soak: $MINUTES min, $JOBS at a time, programs: ${AVAILABLE[*]}; designs: ${DESIGNS[*]}; dir $W"

# The expected output of each, from a native run.
for p in "${AVAILABLE[@]}"; do
    mkdir -p "$W/native/$p"
    (cd "$W/native/$p" && "prog_$p" "$W/native/$p") > "$W/native/$p.expected" 2>&1 || { echo "soak: $p fails natively:"; cat "$W/native/$p.expected"; exit 1; }
done

# ---- the workers --------------------------------------------------------------------------------

LIMITS=("" "" "--resident-limit 16M" "--resident-limit 4M")
worker() {   # worker K END_EPOCH
    local k=$1 end=$2 n=0
    while [ "$(date +%s)" -lt "$end" ]; do
        local p=${AVAILABLE[$(( (n + k) % ${#AVAILABLE[@]} ))]}
        local vm=${DESIGNS[$(( (n / ${#AVAILABLE[@]} + k) % 4 ))]}
        local limit=${LIMITS[$(( (n + 2 * k) % 4 ))]}
        local dir=$W/mnt/w$k/$p
        mkdir -p "$dir"
        # shellcheck disable=SC2086
        (cd "$dir" && timeout 600 "$LAB" run --mount "$W/mnt" --vm "$vm" $limit -- bash -c "prog_$p $dir") > "$W/w$k.out" 2>&1
        local rc=$?
        if [ $rc -ne 0 ] || ! cmp -s "$W/w$k.out" "$W/native/$p.expected"; then
            local f=$W/fail/$k-$n-$p
            { echo "$p under $vm ${limit:-no limit}: exit $rc"; echo "--- got"; cat "$W/w$k.out"; echo "--- expected"; cat "$W/native/$p.expected"; } > "$f"
            echo "soak: FAIL $p under $vm ${limit:-no limit} (exit $rc): $f"
        fi
        echo "$p" >> "$W/w$k.done"
        n=$((n + 1))
    done
}

sample() {   # prints: rss_kb fds threads swap_bytes processes_alive
    local rss thr fds sw alive
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$DAEMON/status")
    thr=$(awk '/^Threads/ {print $2}' "/proc/$DAEMON/status")
    fds=$(ls "/proc/$DAEMON/fd" | wc -l)
    sw=$(stat -c %s "/run/lab/swap-$DAEMON.db" "/run/lab/swap-$DAEMON.db-wal" 2>/dev/null | awk '{s += $1} END {print s + 0}')
    alive=$(awk '$1 == "processes_alive" {print $2}' "$W/mnt/.lab/stats")
    echo "$rss $fds $thr $sw $alive"
}
stat_of() { awk -v n="$1" '$1 == n {print $2}' "$W/mnt/.lab/stats"; }
wait_idle_trim() {   # waits until no program is alive and the daemon's last trim came after all of them
    for _ in $(seq 240); do
        [ "$(stat_of processes_alive)" = 0 ] && [ "$(stat_of idle_trim_after_processes)" = "$(stat_of processes)" ] && return 0
        sleep 0.5
    done
    echo "soak: no idle trim within 120 s"; return 1
}

settle() {   # deletes the programs' files, then waits for an idle trim that follows
    rm -rf "$W"/mnt/w*
    "$LAB" run --mount "$W/mnt" -- /bin/true   # a last (empty) busy spell: the trim after it sees the files gone
    wait_idle_trim
}

run_workers() {   # run_workers SECONDS
    local end=$(( $(date +%s) + $1 )) k
    WORKERS=()
    for k in $(seq 0 $((JOBS - 1))); do worker "$k" "$end" & WORKERS+=($!); done
}

# Warm-up: one minute (or less for a short soak), then the idle footprint to compare with.
WARM=$(( MINUTES * 60 / 10 )); [ "$WARM" -gt 60 ] && WARM=60; [ "$WARM" -lt 20 ] && WARM=20
run_workers "$WARM"; wait "${WORKERS[@]}"; WORKERS=()
# Idle footprints are taken with the programs' files deleted: a file that exists keeps its node
# (the kernel holds it) and its page cache.
settle || exit 1
IDLE0=$(sample)
echo "soak: idle after warm-up: rss ${IDLE0%% *} kB"

START=$(date +%s); END=$((START + MINUTES * 60))
run_workers $((MINUTES * 60))
SAMPLES=()
while [ "$(date +%s)" -lt "$END" ]; do
    sleep "$SAMPLE"
    s=$(sample); SAMPLES+=("$(( ($(date +%s) - START) / 60 )) $s")
    echo "soak: minute ${SAMPLES[-1]%% *}: rss/fds/threads/swap/alive = ${s}"
done
wait "${WORKERS[@]}"; WORKERS=()
settle || exit 1
IDLE1=$(sample)

# ---- the report ---------------------------------------------------------------------------------

echo
printf '%-8s %10s %6s %8s %14s %6s\n' minute rss_kb fds threads swap_bytes alive
printf '%-8s %10s %6s %8s %14s %6s\n' idle0 $IDLE0
for s in "${SAMPLES[@]}"; do printf '%-8s %10s %6s %8s %14s %6s\n' $s; done
printf '%-8s %10s %6s %8s %14s %6s\n' idle1 $IDLE1
echo
runs=$(cat "$W"/w*.done 2>/dev/null | wc -l)
echo "programs run: $runs ($(cat "$W"/w*.done | sort | uniq -c | awk '{printf "%s %s, ", $2, $1}'))"
fails=$(ls "$W/fail" | wc -l)
echo "failures: $fails"
grep -E '^(processes|internal_errors|pager_errors|lookup_miss|swap_pages_written|pageouts|pageins|swap_slots_in_use|objects_alive|idle_trims) ' "$W/mnt/.lab/stats" | tr '\n' ' '; echo
echo "daemon log: $(wc -l < "$W/daemon.log") lines; errors: $(grep -c 'error' "$W/daemon.log")"
grep 'error' "$W/daemon.log" | head -5

bad=0
[ "$fails" -gt 0 ] && { bad=1; for f in $(ls "$W/fail" | head -5); do echo "=== $f"; head -20 "$W/fail/$f"; done; }
read -r r0 f0 _ w0 _ <<<"$IDLE0"; read -r r1 f1 _ w1 _ <<<"$IDLE1"
[ "$r1" -gt $(( r0 * 3 / 2 )) ] && { echo "soak: idle RSS grew: $r0 -> $r1 kB"; bad=1; }
[ "$f1" -gt $(( f0 + 16 )) ] && { echo "soak: idle descriptors grew: $f0 -> $f1"; bad=1; }
[ "$w1" -gt $(( w0 + (1 << 20) )) ] && { echo "soak: idle swap store grew: $w0 -> $w1 bytes"; bad=1; }
# Busy samples swing with what runs at that moment (the swap store fills and empties): growth is
# the last third's lowest sample over 1.5x the first third's highest (6 samples at least).
n=${#SAMPLES[@]}
if [ "$n" -ge 6 ]; then
    third=$((n / 3)); ra=0; fa=0; rz=; fz=
    for s in "${SAMPLES[@]:0:$third}"; do read -r _ r f _ <<<"$s"; [ "$r" -gt "$ra" ] && ra=$r; [ "$f" -gt "$fa" ] && fa=$f; done
    for s in "${SAMPLES[@]:$((n - third))}"; do read -r _ r f _ <<<"$s"; [ -z "$rz" ] || [ "$r" -lt "$rz" ] && rz=$r; [ -z "$fz" ] || [ "$f" -lt "$fz" ] && fz=$f; done
    [ "$rz" -gt $(( ra * 3 / 2 )) ] && { echo "soak: busy RSS grew: first third at most $ra kB, last third at least $rz kB"; bad=1; }
    [ "$fz" -gt $(( fa * 3 / 2 )) ] && { echo "soak: busy descriptors grew: first third at most $fa, last third at least $fz"; bad=1; }
fi
[ $bad -eq 0 ] && echo "soak: PASS" || echo "soak: FAIL"
exit $bad
