# Sourced by demo.sh and bench.sh: paths, and a scratch backing dir + mount point that
# are unmounted and removed on exit, whatever happens.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LAB="$ROOT/build/lab"
export LAB_PRELOAD="$ROOT/build/liblabpreload.so"
WORK=$(mktemp -d "/tmp/lab-$1.XXXXXX")
BACK="$WORK/backing" MNT="$WORK/mnt"
mkdir -p "$BACK" "$MNT"
cleanup() {
  if grep -q " $MNT " /proc/self/mountinfo 2>/dev/null; then "$LAB" unmount "$MNT" >/dev/null 2>&1 || umount -l "$MNT" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
