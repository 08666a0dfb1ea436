/*
 * fsx: a differential random exerciser for one file (the idea of the classic fsx).
 *
 *   fsx [-N ops] [-l maxlen] [-o maxoplen] [-c P] [-q] SEED TESTFILE REFFILE
 *   fsx [-N ops] [-l maxlen] [-o maxoplen] [-c P] [-q] [-S SEED] TESTFILE
 *
 * The second form takes xfstests' fsx command line: the reference is then an unlinked file in
 * $TMPDIR (or /tmp), and the whole files are compared at every close/reopen and at the end
 * rather than after every step (reads still compare what they read). -c P: after one step in P
 * (on average), close the test file, drop the kernel's caches as xfstests' fsx does (the shell
 * command `echo 3 > /proc/sys/vm/drop_caches`, under the same environment) and reopen it.
 * -o: the longest read, write or fallocate (default 65536).
 *
 * Applies the same random operations to TESTFILE (on the lab mount) and REFFILE (on a native
 * file system): pwrite, pread, ftruncate up and down, fallocate (allocate, keep-size, punch hole,
 * zero range), reads and writes through MAP_SHARED mappings and writes through MAP_PRIVATE ones
 * (which must never reach the file), msync. After every step both files are read whole and
 * compared byte for byte (and their sizes). On a mismatch it prints the seed, the step, the tail
 * of the operation log and the first differing bytes, and exits 1. Exit 0: all steps agreed.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/falloc.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define LOGN 48

enum op { OP_WRITE, OP_READ, OP_TRUNC, OP_FALLOC, OP_MREAD, OP_MWRITE, OP_MPRIV, OP_COUNT };
static const char *op_names[] = { "write", "read", "truncate", "fallocate", "mmap-read", "mmap-write-shared", "mmap-write-private" };

struct logent { long step; int op; long off, len; int mode; };

static struct logent oplog[LOGN];
static long steps_done;
static unsigned long long seed;
static int tfd, rfd;
static const char *tpath, *rpath;
static long maxlen = 256 * 1024;
static long maxoplen = 65536;
static int full_checks = 1; /* compare the whole files after every step */
static long pagesz;
static unsigned char *tbuf, *rbuf, *data;
static int falloc_ok[4] = { 1, 1, 1, 1 };

/* splitmix64: the same sequence for a seed on every machine */
static unsigned long long rng_state;
static unsigned long long rnd(void)
{
    unsigned long long z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
static long rnd_below(long n) { return n <= 0 ? 0 : (long)(rnd() % (unsigned long long)n); }

static void log_op(int op, long off, long len, int mode)
{
    struct logent *e = &oplog[steps_done % LOGN];
    e->step = steps_done; e->op = op; e->off = off; e->len = len; e->mode = mode;
}

static void dump_log(void)
{
    long first = steps_done >= LOGN ? steps_done - LOGN + 1 : 0;
    fprintf(stderr, "fsx: last operations (step op offset length mode):\n");
    for (long s = first; s <= steps_done; s++) {
        struct logent *e = &oplog[s % LOGN];
        if (e->step != s) continue;
        fprintf(stderr, "  %6ld %-19s %8ld %8ld %d\n", e->step, op_names[e->op], e->off, e->len, e->mode);
    }
}

static void fail(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "fsx: FAILED at step %ld, seed %llu: ", steps_done, seed);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    dump_log();
    fprintf(stderr, "fsx: reproduce with: fsx -N %ld -l %ld -o %ld %llu TESTFILE REFFILE\n", steps_done + 1, maxlen, maxoplen, seed);
    exit(1);
}

static long fsize(int fd, const char *which)
{
    struct stat st;
    if (fstat(fd, &st) != 0) fail("fstat %s: %s", which, strerror(errno));
    return (long)st.st_size;
}

static long full_pread(int fd, unsigned char *buf, long len, long off)
{
    long got = 0;
    while (got < len) {
        ssize_t n = pread(fd, buf + got, (size_t)(len - got), off + got);
        if (n < 0) { if (errno == EINTR) continue; return -errno; }
        if (n == 0) break;
        got += n;
    }
    return got;
}

static void full_pwrite(int fd, const unsigned char *buf, long len, long off, const char *which)
{
    long done = 0;
    while (done < len) {
        ssize_t n = pwrite(fd, buf + done, (size_t)(len - done), off + done);
        if (n < 0) { if (errno == EINTR) continue; fail("pwrite %s at %ld+%ld: %s", which, off, len, strerror(errno)); }
        done += n;
    }
}

static void first_diff(const unsigned char *a, const unsigned char *b, long n, const char *what)
{
    for (long i = 0; i < n; i++) {
        if (a[i] != b[i]) {
            long from = i > 8 ? i - 8 : 0, to = i + 8 < n ? i + 8 : n;
            fprintf(stderr, "fsx: %s: first difference at byte %ld (page %ld)\n  test:", what, i, i / pagesz);
            for (long k = from; k < to; k++) fprintf(stderr, " %02x", a[k]);
            fprintf(stderr, "\n  ref: ");
            for (long k = from; k < to; k++) fprintf(stderr, " %02x", b[k]);
            fprintf(stderr, "\n");
            return;
        }
    }
}

/* Both files whole: sizes and every byte. */
static void check_all(void)
{
    long ts = fsize(tfd, "test"), rs = fsize(rfd, "ref");
    if (ts != rs) fail("size %ld on the test file, %ld on the reference", ts, rs);
    long tg = full_pread(tfd, tbuf, ts, 0), rg = full_pread(rfd, rbuf, rs, 0);
    if (tg < 0) fail("pread of the test file: %s", strerror((int)-tg));
    if (rg < 0) fail("pread of the reference: %s", strerror((int)-rg));
    if (tg != rg) fail("whole-file read gave %ld bytes from the test file, %ld from the reference", tg, rg);
    if (memcmp(tbuf, rbuf, (size_t)tg) != 0) {
        first_diff(tbuf, rbuf, tg, "contents differ");
        fail("contents differ");
    }
}

static void fill(long len)
{
    for (long i = 0; i < len; i += 8) {
        unsigned long long v = rnd();
        memcpy(data + i, &v, (size_t)(len - i < 8 ? len - i : 8));
    }
}

static void do_write(void)
{
    long off = rnd_below(maxlen), len = 1 + rnd_below(rnd_below(4) == 0 ? maxoplen : (maxoplen < 4096 ? maxoplen : 4096));
    if (off + len > maxlen) len = maxlen - off;
    if (len <= 0) return;
    log_op(OP_WRITE, off, len, 0);
    fill(len);
    full_pwrite(tfd, data, len, off, "test");
    full_pwrite(rfd, data, len, off, "ref");
}

static void do_read(void)
{
    long size = fsize(rfd, "ref");
    long off = rnd_below(size + 4096), len = 1 + rnd_below(maxoplen);
    log_op(OP_READ, off, len, 0);
    long tg = full_pread(tfd, tbuf, len, off), rg = full_pread(rfd, rbuf, len, off);
    if (tg != rg) fail("pread %ld+%ld gave %ld bytes from the test file, %ld from the reference", off, len, tg, rg);
    if (tg > 0 && memcmp(tbuf, rbuf, (size_t)tg) != 0) {
        first_diff(tbuf, rbuf, tg, "pread differs");
        fail("pread %ld+%ld differs", off, len);
    }
}

static void do_truncate(void)
{
    long size = rnd_below(maxlen + 1);
    if (rnd_below(4) == 0) size = size / pagesz * pagesz; /* page-aligned sizes too */
    log_op(OP_TRUNC, size, 0, 0);
    if (ftruncate(tfd, size) != 0) fail("ftruncate test to %ld: %s", size, strerror(errno));
    if (ftruncate(rfd, size) != 0) fail("ftruncate ref to %ld: %s", size, strerror(errno));
}

static void do_fallocate(void)
{
    static const int modes[4] = { 0, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, FALLOC_FL_ZERO_RANGE };
    int m = (int)rnd_below(4);
    long off = rnd_below(maxlen), len = 1 + rnd_below(maxoplen);
    if (off + len > maxlen) len = maxlen - off;
    if (len <= 0 || !falloc_ok[m]) return;
    log_op(OP_FALLOC, off, len, modes[m]);
    if (fallocate(tfd, modes[m], off, len) != 0) {
        /* A mode the backing file system lacks: not a difference, just never tried again. */
        if (errno == EOPNOTSUPP) { falloc_ok[m] = 0; return; }
        fail("fallocate test mode %d %ld+%ld: %s", modes[m], off, len, strerror(errno));
    }
    if (fallocate(rfd, modes[m], off, len) != 0) {
        if (errno == EOPNOTSUPP) { falloc_ok[m] = 0; fail("fallocate mode %d works on the test file only", modes[m]); }
        fail("fallocate ref mode %d %ld+%ld: %s", modes[m], off, len, strerror(errno));
    }
}

/* A page-aligned window [moff, moff+mlen) inside the file, and the byte range [off, off+len) in it. */
static int pick_window(long size, long *moff, long *mlen, long *off, long *len)
{
    if (size <= 0) return 0;
    long pages = (size + pagesz - 1) / pagesz;
    long p0 = rnd_below(pages), np = 1 + rnd_below(pages - p0 < 16 ? pages - p0 : 16);
    *moff = p0 * pagesz;
    *mlen = np * pagesz;
    long end = *moff + *mlen < size ? *moff + *mlen : size; /* bytes past EOF in the last page: not touched */
    *off = *moff + rnd_below(end - *moff);
    *len = 1 + rnd_below(end - *off);
    return 1;
}

static void do_mmap_read(void)
{
    long moff, mlen, off, len;
    if (!pick_window(fsize(rfd, "ref"), &moff, &mlen, &off, &len)) return;
    log_op(OP_MREAD, off, len, 0);
    unsigned char *p = mmap(NULL, (size_t)mlen, PROT_READ, MAP_SHARED, tfd, moff);
    if (p == MAP_FAILED) fail("mmap read %ld+%ld: %s", moff, mlen, strerror(errno));
    long rg = full_pread(rfd, rbuf, len, off);
    if (rg != len) fail("ref pread %ld+%ld short", off, len);
    memcpy(tbuf, p + (off - moff), (size_t)len);
    if (munmap(p, (size_t)mlen) != 0) fail("munmap: %s", strerror(errno));
    if (memcmp(tbuf, rbuf, (size_t)len) != 0) {
        first_diff(tbuf, rbuf, len, "mapped bytes differ");
        fail("mmap read %ld+%ld differs", off, len);
    }
}

static void do_mmap_write_shared(void)
{
    long moff, mlen, off, len;
    if (!pick_window(fsize(rfd, "ref"), &moff, &mlen, &off, &len)) return;
    int sync = (int)rnd_below(3); /* 0: munmap only, 1: msync(MS_SYNC) first, 2: msync(MS_ASYNC) */
    log_op(OP_MWRITE, off, len, sync);
    fill(len);
    unsigned char *t = mmap(NULL, (size_t)mlen, PROT_READ | PROT_WRITE, MAP_SHARED, tfd, moff);
    if (t == MAP_FAILED) fail("mmap shared %ld+%ld: %s", moff, mlen, strerror(errno));
    unsigned char *r = mmap(NULL, (size_t)mlen, PROT_READ | PROT_WRITE, MAP_SHARED, rfd, moff);
    if (r == MAP_FAILED) fail("mmap shared ref: %s", strerror(errno));
    memcpy(t + (off - moff), data, (size_t)len);
    memcpy(r + (off - moff), data, (size_t)len);
    if (sync && msync(t, (size_t)mlen, sync == 1 ? MS_SYNC : MS_ASYNC) != 0) fail("msync: %s", strerror(errno));
    /* Before unmapping: read(2) of the file must already see the stores (one page cache). */
    long tg = full_pread(tfd, tbuf, len, off);
    if (tg != len || memcmp(tbuf, data, (size_t)len) != 0) {
        if (tg == len) first_diff(tbuf, data, len, "pread after a shared store");
        fail("pread %ld+%ld does not see the MAP_SHARED store (got %ld bytes)", off, len, tg);
    }
    if (munmap(t, (size_t)mlen) != 0 || munmap(r, (size_t)mlen) != 0) fail("munmap: %s", strerror(errno));
}

static void do_mmap_write_private(void)
{
    long moff, mlen, off, len;
    if (!pick_window(fsize(rfd, "ref"), &moff, &mlen, &off, &len)) return;
    log_op(OP_MPRIV, off, len, 0);
    fill(len);
    unsigned char *t = mmap(NULL, (size_t)mlen, PROT_READ | PROT_WRITE, MAP_PRIVATE, tfd, moff);
    if (t == MAP_FAILED) fail("mmap private %ld+%ld: %s", moff, mlen, strerror(errno));
    /* Read first on some steps so the page is shared before the copy-on-write. */
    volatile unsigned char sink = 0;
    if (rnd_below(2)) sink ^= t[off - moff];
    (void)sink;
    memcpy(t + (off - moff), data, (size_t)len);
    if (memcmp(t + (off - moff), data, (size_t)len) != 0) fail("a MAP_PRIVATE mapping does not read back its own store");
    /* The rest of the window still shows the file. */
    long end = moff + mlen < fsize(rfd, "ref") ? moff + mlen : fsize(rfd, "ref");
    long rg = full_pread(rfd, rbuf, end - moff, moff);
    if (rg != end - moff) fail("ref pread short");
    memcpy(rbuf + (off - moff), data, (size_t)len);
    if (memcmp(t, rbuf, (size_t)(end - moff)) != 0) {
        first_diff(t, rbuf, end - moff, "private mapping");
        fail("MAP_PRIVATE window %ld+%ld differs from file+store", moff, end - moff);
    }
    if (munmap(t, (size_t)mlen) != 0) fail("munmap: %s", strerror(errno));
    /* check_all() then proves the store never reached the file. */
}

/* xfstests' docloseopen: close, drop the caches, reopen; then everything must still agree. */
static void do_closeopen(void)
{
    if (close(tfd) != 0) fail("close: %s", strerror(errno));
    int st = system("echo 3 > /proc/sys/vm/drop_caches");
    if (st != 0) fail("dropping the caches (echo 3 > /proc/sys/vm/drop_caches) failed: status %#x", st);
    tfd = open(tpath, O_RDWR);
    if (tfd < 0) fail("reopen %s: %s", tpath, strerror(errno));
    check_all();
}

int main(int argc, char **argv)
{
    long nops = 10000;
    int quiet = 0, c, have_seed = 0;
    long closeprob = 0;
    while ((c = getopt(argc, argv, "N:l:o:c:S:q")) != -1) {
        switch (c) {
        case 'N': nops = strtol(optarg, NULL, 10); break;
        case 'l': maxlen = strtol(optarg, NULL, 10); break;
        case 'o': maxoplen = strtol(optarg, NULL, 10); break;
        case 'c': closeprob = strtol(optarg, NULL, 10); break;
        case 'S': seed = strtoull(optarg, NULL, 10); have_seed = 1; break;
        case 'q': quiet = 1; break;
        default: goto usage;
        }
    }
    int files = argc - optind - (have_seed ? 0 : 1);
    if ((files != 1 && files != 2) || (files == 1 && !have_seed && argc - optind != 1) || nops < 0 || maxlen < 1 ||
        maxoplen < 1 || closeprob < 0) {
usage:
        fprintf(stderr, "usage: fsx [-N ops] [-l maxlen] [-o maxoplen] [-c P] [-q] SEED TESTFILE REFFILE\n"
                        "       fsx [-N ops] [-l maxlen] [-o maxoplen] [-c P] [-q] [-S SEED] TESTFILE\n");
        return 2;
    }
    if (argc - optind == 1) {
        files = 1; /* xfstests' form: the seed, if any, came with -S */
    } else if (!have_seed) {
        seed = strtoull(argv[optind++], NULL, 10);
        files = argc - optind;
    }
    rng_state = seed;
    tpath = argv[optind];
    char refpath[4096];
    if (files == 2) {
        rpath = argv[optind + 1];
    } else {
        const char *tmp = getenv("TMPDIR");
        snprintf(refpath, sizeof refpath, "%s/fsx-ref-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        int fd = mkstemp(refpath);
        if (fd < 0) { fprintf(stderr, "fsx: %s: %s\n", refpath, strerror(errno)); return 2; }
        close(fd);
        rpath = refpath;
        full_checks = 0;
    }
    pagesz = sysconf(_SC_PAGESIZE);
    long bufsz = maxlen + 2 * (maxoplen > 65536 ? maxoplen : 65536) + pagesz;
    tbuf = malloc((size_t)bufsz); rbuf = malloc((size_t)bufsz); data = malloc((size_t)bufsz);
    if (!tbuf || !rbuf || !data) { fprintf(stderr, "fsx: out of memory\n"); return 2; }
    tfd = open(tpath, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (tfd < 0) { fprintf(stderr, "fsx: %s: %s\n", tpath, strerror(errno)); return 2; }
    rfd = open(rpath, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (rfd < 0) { fprintf(stderr, "fsx: %s: %s\n", rpath, strerror(errno)); return 2; }
    if (files == 1) unlink(rpath); /* ours alone: gone when we are */

    long counts[OP_COUNT] = { 0 };
    for (steps_done = 0; steps_done < nops; steps_done++) {
        /* Weights: writes and truncates shape the file, the rest observe or mutate it. */
        long r = rnd_below(100);
        int op = r < 25 ? OP_WRITE : r < 40 ? OP_READ : r < 50 ? OP_TRUNC : r < 58 ? OP_FALLOC
               : r < 72 ? OP_MREAD : r < 88 ? OP_MWRITE : OP_MPRIV;
        switch (op) {
        case OP_WRITE: do_write(); break;
        case OP_READ: do_read(); break;
        case OP_TRUNC: do_truncate(); break;
        case OP_FALLOC: do_fallocate(); break;
        case OP_MREAD: do_mmap_read(); break;
        case OP_MWRITE: do_mmap_write_shared(); break;
        default: do_mmap_write_private(); break;
        }
        counts[op]++;
        if (closeprob > 0 && rnd_below(closeprob) == 0) do_closeopen();
        else if (full_checks) check_all();
        if (!quiet && nops >= 100000 && steps_done % 100000 == 0 && steps_done)
            fprintf(stderr, "fsx: %ld steps\n", steps_done);
    }
    /* What reached the files through fds that are about to close must survive a reopen. */
    if (fsync(tfd) != 0) fail("fsync: %s", strerror(errno));
    close(tfd);
    tfd = open(tpath, O_RDWR);
    if (tfd < 0) fail("reopen %s: %s", tpath, strerror(errno));
    check_all();
    printf("fsx: seed %llu, %ld steps, all equal:", seed, nops);
    for (int i = 0; i < OP_COUNT; i++) printf(" %s=%ld", op_names[i], counts[i]);
    printf(" fallocate-modes-unsupported=%d\n", 4 - falloc_ok[0] - falloc_ok[1] - falloc_ok[2] - falloc_ok[3]);
    return 0;
}
