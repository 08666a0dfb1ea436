#!/usr/bin/env bash
# File-system bench: each operation on the lab mount as a ratio to the same operation directly on
# the backing directory, in one run (compare only within a run: the machines are noisy).
# Ratio = native time / lab time (1.00x: as fast as native; higher is better).
#   SIZE_MB (1024)   sequential file size     RANDOM_READS (20000)  4 KiB preads
#   FILES (10000)    create+stat+unlink       TREE (5000)           files for git status
set -euo pipefail
source "$(dirname "$0")/scratch.sh" benchfs
SIZE_MB=${SIZE_MB:-1024} RANDOM_READS=${RANDOM_READS:-20000} FILES=${FILES:-10000} TREE=${TREE:-5000}
PY=$(command -v python3)

"$LAB" mount "$BACK" "$MNT" >/dev/null

# Dropping the page cache before reads makes them cold on both sides; where that is not allowed
# both sides read warm, and the script says so.
if (echo 3 > /proc/sys/vm/drop_caches) 2>/dev/null; then DROP=yes; else DROP=no; fi
drop() { [ "$DROP" = yes ] && sync && echo 3 > /proc/sys/vm/drop_caches || true; }
now() { date +%s%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }

declare -A T
# side_dir SIDE: the directory an operation runs in on that side.
side_dir() { if [ "$1" = lab ]; then echo "$MNT"; else echo "$BACK"; fi; }
# time_cmd KEY SIDE CMD...: seconds of one run of CMD
time_cmd() { local k=$1 s=$2; shift 2; local a b; a=$(now); "$@" >/dev/null; b=$(now); T[$k.$s]=$(secs "$a" "$b"); }

for side in native lab; do
  dir=$(side_dir $side)
  # Sequential write: 1 MiB blocks, data on the file system's disk at the end (fdatasync).
  time_cmd seqwrite $side dd if=/dev/zero of="$dir/seq.$side" bs=1M count="$SIZE_MB" conv=fdatasync status=none
done
for side in native lab; do
  dir=$(side_dir $side)
  drop
  time_cmd seqread $side dd if="$dir/seq.native" of=/dev/null bs=1M status=none
done

# Random 4 KiB preads over the 1 GiB file (the same offsets on both sides), after one warm pass
# of the same offsets so both read from memory: this is the per-request cost.
cat > "$WORK/rand.py" <<'EOF'
import os, random, sys, time
path, n = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
rnd = random.Random(42)
offs = [rnd.randrange(0, size // 4096) * 4096 for _ in range(n)]
for o in offs: os.pread(fd, 4096, o)
t = time.perf_counter()
for o in offs: os.pread(fd, 4096, o)
print("%.6f" % (time.perf_counter() - t))
EOF
for side in native lab; do T[randread.$side]=$("$PY" "$WORK/rand.py" "$(side_dir $side)/seq.native" "$RANDOM_READS"); done

# Metadata: create, stat and unlink FILES files in one directory.
cat > "$WORK/meta.py" <<'EOF'
import os, sys, time
d, n = sys.argv[1], int(sys.argv[2])
os.makedirs(d, exist_ok=True)
t = time.perf_counter()
for i in range(n):
    fd = os.open("%s/f%d" % (d, i), os.O_CREAT | os.O_WRONLY, 0o644); os.close(fd)
for i in range(n): os.stat("%s/f%d" % (d, i))
for i in range(n): os.unlink("%s/f%d" % (d, i))
print("%.6f" % (time.perf_counter() - t))
EOF
for side in native lab; do T[meta.$side]=$("$PY" "$WORK/meta.py" "$(side_dir $side)/meta.$side" "$FILES"); done
rm -f "$BACK/seq.native" "$BACK/seq.lab"

# git status on a committed tree of TREE files (second run of each: the index is warm).
mkdir -p "$BACK/repo"
(
  cd "$BACK/repo"
  git init -q .
  for ((d = 0; d < TREE / 100; d++)); do
    mkdir -p "d$d"
    for ((f = 0; f < 100; f++)); do echo "$d $f" > "d$d/f$f"; done
  done
  git add -A && git -c user.name=bench -c user.email=bench@example.invalid commit -qm tree
)
for side in native lab; do
  dir=$(side_dir $side)
  git -C "$dir/repo" status --porcelain >/dev/null
  time_cmd gitstatus $side git -C "$dir/repo" status --porcelain
done

ratio() { awk -v n="$1" -v l="$2" 'BEGIN { if (l > 0) printf "%.2fx", n / l; else print "n/a" }'; }
mbs() { awk -v s="$1" -v mb="$SIZE_MB" 'BEGIN { if (s > 0) printf "%.0f MB/s", mb / s; else print "n/a" }'; }
echo "lab file system vs its backing directory, one run (cold reads: page cache dropped=$DROP)"
printf '%-44s %12s %12s %8s %8s\n' "operation" "native s" "lab s" "ratio" "target"
row() { printf '%-44s %12s %12s %8s %8s\n' "$1" "${T[$2.native]}" "${T[$2.lab]}" "$(ratio "${T[$2.native]}" "${T[$2.lab]}")" "$3"; }
row "sequential write ${SIZE_MB} MiB, 1 MiB blocks" seqwrite 0.50x
row "sequential read ${SIZE_MB} MiB, 1 MiB blocks" seqread 0.50x
row "random 4 KiB pread x ${RANDOM_READS} (warm)" randread 0.30x
row "create+stat+unlink x ${FILES}" meta 0.25x
row "git status, ${TREE} files" gitstatus 0.25x
echo "throughput: write native $(mbs "${T[seqwrite.native]}"), lab $(mbs "${T[seqwrite.lab]}"); read native $(mbs "${T[seqread.native]}"), lab $(mbs "${T[seqread.lab]}")"
