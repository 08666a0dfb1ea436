#!/usr/bin/env bash
# make demo: mount the lab over sample data, run two unmodified programs under `lab run`,
# check what they printed, show the counters, unmount. Cleans up whatever happens.
set -euo pipefail
source "$(dirname "$0")/scratch.sh" demo
# The interpreter itself, not a version manager's wrapper script (one process, clear counters).
PY=$(python3 -c "import sys; print(sys.executable)")

say() { printf '\n\033[1m%s\033[0m\n' "$*"; }
check() { if [ "$1" = "$2" ]; then echo "  ✓ $3"; else echo "  ✗ $3: expected '$2', got '$1'"; exit 1; fi; }

# Sample data: a text corpus and a records file for python, an empty database for sqlite3.
python3 - "$BACK" <<'EOF'
import sys, random
d = sys.argv[1]
random.seed(7)
words = ["page", "fault", "shadow", "object", "amap", "anon", "vnode", "pager", "copy", "write"]
with open(f"{d}/corpus.txt", "w") as f:
    for i in range(20000):
        f.write(" ".join(random.choice(words) for _ in range(8)) + "\n")
with open(f"{d}/records.bin", "wb") as f:
    f.write(bytes(64 * 4096))
EOF
cat > "$BACK/wordcount.py" <<'EOF'
# Counts words through a private mapping, scribbles on it (copy-on-write), then a forked
# child and the parent each fill half of a shared records file.
import mmap, os, sys, collections
corpus, records = sys.argv[1], sys.argv[2]
with open(corpus, "rb") as f:
    m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
counts = collections.Counter(bytes(m).split())
m[0:4] = b"XXXX"                       # a private write: the file must not change
with open(records, "r+b") as f:
    r = mmap.mmap(f.fileno(), 0)       # MAP_SHARED
half = len(r) // 2
pid = os.fork()
if pid == 0:
    r[half:half + 5] = b"child"
    os._exit(0)
os.waitpid(pid, 0)
r[0:6] = b"parent"
r.flush()
print(sum(counts.values()), counts[b"shadow"], bytes(r[half:half + 5]).decode())
EOF

say "1. lab mount: the lab file system over $BACK"
"$LAB" mount "$BACK" "$MNT"
ls -l "$MNT" | sed 's/^/  /'

say "2. python3 under lab run: private map (copy-on-write), shared map, fork"
OUT=$("$LAB" run --mount "$MNT" --stats -- "$PY" "$MNT/wordcount.py" "$MNT/corpus.txt" "$MNT/records.bin" 2>"$WORK/py.stats")
EXPECT=$(python3 -c "
import collections; c=collections.Counter(open('$BACK/corpus.txt','rb').read().split()); print(sum(c.values()), c[b'shadow'], 'child')")
check "$OUT" "$EXPECT" "python3 counted the words and saw the child's shared write ($OUT)"
check "$(head -c 4 "$BACK/corpus.txt")" "$(head -c 4 "$MNT/corpus.txt")" "the private write did not reach the file"
check "$(head -c 6 "$BACK/records.bin")" "parent" "the shared write reached the backing file"

say "3. sqlite3 under lab run, with PRAGMA mmap_size (the database file is mapped shared)"
OUT=$("$LAB" run --mount "$MNT" --stats -- sqlite3 "$MNT/demo.db" "PRAGMA mmap_size=268435456;
CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<20000) INSERT INTO t SELECT x, hex(randomblob(16)) FROM c;
SELECT count(*), sum(length(v)) FROM t;
PRAGMA integrity_check;" 2>"$WORK/sq.stats" | tail -2 | tr '\n' ' ')
check "$OUT" "20000|640000 ok " "sqlite3 wrote 20000 rows and the database checks out"

say "4. sqlite3 scanning a 32 MB lab database through mmap, under each design (lab compare)"
# A bigger database, written natively on the backing directory, then read through the mount with
# PRAGMA mmap_size: the scan faults on the shared mapping of the database, which each design
# serves with its own read-ahead and prefault (faults_on_lab_files); the coverage rows say how
# many of the kernel's faults for the run the lab served, and where the others went.
python3 - "$BACK/scan.db" <<'EOF2'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
c.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<300000) "
          "INSERT INTO t SELECT x, printf('%096d', x * 7919 % 1000003) FROM c")
c.commit()
EOF2
echo "  $(du -m "$BACK/scan.db" | cut -f1) MB database, query: PRAGMA mmap_size=268435456; SELECT count(*), sum(length(v)) FROM t WHERE v LIKE '%42%'"
"$LAB" compare --mount "$MNT" --all -- sqlite3 "$MNT/scan.db" "PRAGMA mmap_size=268435456;
SELECT count(*), sum(length(v)) FROM t WHERE v LIKE '%42%';" >"$WORK/cmp.txt"
awk 'NR == 1 { printf "  %s\n", $0; next }
  $1 ~ /^(fault_count|faults_on_lab_files|pages_installed|kernel_faults|lab_faults_outside|lab_coverage_pct|outside_(file|stack|heap|anon|other)_pages|outside_reports)$/ { printf "  %s\n", $0 }
  /^output:/ { printf "  %s\n", $0 }' "$WORK/cmp.txt"
cat <<'EOF2'
  faults_on_lab_files: the database's own faults, served by the design (its only lab file);
  kernel_faults: every fault the kernel counted for sqlite3; lab_coverage_pct: fault_count / kernel_faults;
  outside_*_pages: pages resident outside lab memory when sqlite3 ended, by kind (README: coverage).
EOF2

say "5. what the lab did for each program (lab run --stats; the whole mount: lab stat, or $MNT/.lab/stats)"
awk '
  FNR == 1 { f++ }
  NF == 2 && $2 ~ /^[0-9.]+$/ { v[f, $1] = $2 }
  END {
    n = split("v_vm_faults v_io_faults read_ahead_pages pages_prefaulted v_zfod v_cow_faults v_cow_optim shadows_created processes fault_latency_us_p50 faults_on_lab_files kernel_faults lab_coverage_pct", k, " ")
    split("uffd faults served|faults that read the file (pager I/O)|pages read ahead with them|neighbour pages mapped ahead (prefault)|zero-filled pages|copy-on-write faults|  of which moved, not copied|shadow objects made|processes (fork children too)|median fault service time, us|faults on lab files (the database, for sqlite3)|faults the kernel counted for the run|uffd faults served / kernel_faults, %", d, "|")
    printf "  %-22s %9s %9s   %s\n", "counter", "python3", "sqlite3", "meaning"
    for (i = 1; i <= n; i++) printf "  %-22s %9s %9s   %s\n", k[i], (1, k[i]) in v ? v[1, k[i]] : 0, (2, k[i]) in v ? v[2, k[i]] : 0, d[i]
  }' "$WORK/py.stats" "$WORK/sq.stats"

say "6. lab unmount: dirty pages written back, daemon stopped"
"$LAB" unmount "$MNT"
check "$(sqlite3 "$BACK/demo.db" 'SELECT count(*) FROM t;')" "20000" "the database on the backing directory has every row"
echo
echo "The lab served every page fault those programs took on lab files and lab anonymous memory."
