/* forkcheck: fork and address-space events that race with the lab's bookkeeping. An
 * ordinary program (plain libc); every failure is printed as "FAIL: ..." and the exit
 * status is non-zero. A child killed by a signal is reported with the signal.
 *
 *   forkcheck malloc N ROUNDS      ROUNDS times: fork N children at once; each mallocs 1 MiB,
 *                                  memsets it to its own byte and checks it
 *   forkcheck fixed N ROUNDS       ROUNDS times: fork N children at once; child k maps 16 pages
 *                                  at its own fixed address and writes them (each must be lab
 *                                  memory of its own process: the run's zero fills say so)
 *   forkcheck pwrite FILE ROUNDS   ROUNDS times: 3 children write their own quarter of FILE
 *                                  through pwrite and a MAP_SHARED mapping; the parent checks
 *   forkcheck mremap ROUNDS        ROUNDS times: 4 children each grow, move and shrink a
 *                                  buffer with mremap, checking its bytes after every call
 *   forkcheck wipeonfork ROUNDS [MOUNT]  MADV_WIPEONFORK: the child sees zeros and the
 *                                  parent's bytes stay; MADV_KEEPONFORK undoes it; an
 *                                  MADV_DONTFORK range is not in the child (with MOUNT: nor
 *                                  in the lab's model of it, MOUNT/.lab/processes/PID/maps)
 *   forkcheck dontunmap ROUNDS     mremap(MREMAP_DONTUNMAP): the bytes move, the old range
 *                                  stays mapped and reads zeros, then takes new writes
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif

#define PG 4096
#define MIB (1 << 20)

static int fail(const char *what)
{
    printf("FAIL: %s (%s)\n", what, strerror(errno));
    fflush(stdout);
    return 1;
}

/* Wait for n children; count those that did not exit 0 (a signal is a kill). */
static int reap(int n, int *killed)
{
    int bad = 0;
    for (int i = 0; i < n; i++) {
        int st;
        pid_t p = wait(&st);
        if (p < 0)
            return bad + fail("wait");
        if (WIFSIGNALED(st)) {
            printf("FAIL: child %d killed by signal %d\n", (int)p, WTERMSIG(st));
            (*killed)++;
            bad++;
        } else if (WEXITSTATUS(st) != 0) {
            printf("FAIL: child %d exited %d\n", (int)p, WEXITSTATUS(st));
            bad++;
        }
    }
    fflush(stdout);
    return bad;
}

static int child_malloc(int k)
{
    uint8_t *p = malloc(MIB);
    if (!p)
        return 2;
    memset(p, 'a' + k, MIB);
    for (size_t i = 0; i < MIB; i += 509)
        if (p[i] != 'a' + k)
            return 3;
    free(p);
    return 0;
}

static int child_fixed(int k)
{
    uint8_t *want = (uint8_t *)(uintptr_t)(0x300000000000ULL + (uint64_t)k * 0x1000000);
    uint8_t *p = mmap(want, 16 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (p != want)
        return 2;
    for (size_t i = 0; i < 16 * PG; i += PG)
        p[i] = (uint8_t)('a' + k);
    for (size_t i = 0; i < 16 * PG; i += PG)
        if (p[i] != 'a' + k)
            return 3;
    return 0;
}

/* n children per round, each running child(k); their exit statuses summed up by reap. */
static int run_children(const char *what, int (*child)(int), int n, int rounds)
{
    int bad = 0, killed = 0;
    for (int r = 0; r < rounds; r++) {
        for (int k = 0; k < n; k++) {
            pid_t p = fork();
            if (p < 0)
                return fail("fork");
            if (p == 0)
                _exit(child(k));
        }
        bad += reap(n, &killed);
    }
    printf("%s children=%d killed=%d bad=%d\n", what, n * rounds, killed, bad);
    return bad != 0;
}

/* Each child: pwrite its quarter's first half, store its second half through the mapping. */
static int child_pwrite(const char *path, int k)
{
    int fd = open(path, O_RDWR);
    if (fd < 0)
        return 2;
    uint8_t *m = mmap(NULL, 4 * 64 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED)
        return 3;
    uint8_t *buf = malloc(32 * PG);
    if (!buf)
        return 4;
    memset(buf, 'A' + k, 32 * PG);
    if (pwrite(fd, buf, 32 * PG, (off_t)k * 64 * PG) != 32 * PG)
        return 5;
    memset(m + (size_t)k * 64 * PG + 32 * PG, 'a' + k, 32 * PG);
    if (msync(m, 4 * 64 * PG, MS_SYNC) != 0)
        return 6;
    for (size_t i = 0; i < 32 * PG; i += 97)
        if (m[(size_t)k * 64 * PG + i] != 'A' + k)
            return 7;
    free(buf);
    munmap(m, 4 * 64 * PG);
    close(fd);
    return 0;
}

static int run_pwrite(const char *path, int rounds)
{
    int bad = 0, killed = 0;
    uint8_t *got = malloc(4 * 64 * PG);
    if (!got)
        return fail("malloc");
    for (int r = 0; r < rounds; r++) {
        int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
        if (fd < 0 || ftruncate(fd, 4 * 64 * PG) != 0)
            return fail("create");
        for (int k = 0; k < 3; k++) {
            pid_t p = fork();
            if (p < 0)
                return fail("fork");
            if (p == 0)
                _exit(child_pwrite(path, k));
        }
        bad += reap(3, &killed);
        if (pread(fd, got, 4 * 64 * PG, 0) != 4 * 64 * PG)
            return fail("pread");
        for (int k = 0; k < 3 && !bad; k++)
            for (size_t i = 0; i < 64 * PG; i++) {
                uint8_t want = i < 32 * PG ? 'A' + k : 'a' + k;
                if (got[(size_t)k * 64 * PG + i] != want) {
                    printf("FAIL: round %d: file byte %zu is %#x, not %#x\n", r, (size_t)k * 64 * PG + i,
                           got[(size_t)k * 64 * PG + i], want);
                    bad++;
                    break;
                }
            }
        close(fd);
    }
    free(got);
    printf("pwrite children=%d killed=%d bad=%d\n", 3 * rounds, killed, bad);
    return bad != 0;
}

static int check_fill(const uint8_t *p, size_t len, uint8_t v)
{
    for (size_t i = 0; i < len; i += PG / 2)
        if (p[i] != v)
            return 0;
    return 1;
}

/* Grow, move, shrink and move back a lab buffer, touching every page in between. */
static int child_mremap(int k)
{
    size_t len = 16 * PG;
    uint8_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return 2;
    memset(p, 'k' + k, len);
    for (int i = 0; i < 200; i++) {
        size_t big = len * 4;
        uint8_t *q = mremap(p, len, big, MREMAP_MAYMOVE);
        if (q == MAP_FAILED)
            return 3;
        if (!check_fill(q, len, 'k' + k))
            return 4;
        memset(q + len, 'k' + k, big - len);
        /* move it to a fresh spot */
        uint8_t *spot = mmap(NULL, big, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (spot == MAP_FAILED)
            return 5;
        uint8_t *r = mremap(q, big, big, MREMAP_MAYMOVE | MREMAP_FIXED, spot);
        if (r != spot)
            return 6;
        if (!check_fill(r, big, 'k' + k))
            return 7;
        /* shrink back */
        p = mremap(r, big, len, 0);
        if (p != r)
            return 8;
        if (!check_fill(p, len, 'k' + k))
            return 9;
    }
    munmap(p, len);
    return 0;
}

static int run_mremap(int rounds)
{
    int bad = 0, killed = 0;
    for (int r = 0; r < rounds; r++) {
        for (int k = 0; k < 4; k++) {
            pid_t p = fork();
            if (p < 0)
                return fail("fork");
            if (p == 0)
                _exit(child_mremap(k));
        }
        bad += reap(4, &killed);
    }
    printf("mremap children=%d killed=%d bad=%d\n", 4 * rounds, killed, bad);
    return bad != 0;
}

/* Does the lab's model of this process have a mapping overlapping [s, s+len)? -1: unreadable. */
static int model_maps(const char *mount, const void *s, size_t len)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/.lab/processes/%d/maps", mount, (int)getpid());
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char line[512];
    int hit = 0;
    uintptr_t a = (uintptr_t)s, b = a + len;
    while (fgets(line, sizeof line, f)) {
        unsigned long st, en;
        if (sscanf(line, "%lx-%lx", &st, &en) == 2 && st < b && a < en)
            hit = 1;
    }
    fclose(f);
    return hit;
}

static int run_wipeonfork(int rounds, const char *mount)
{
    size_t len = 32 * PG;
    int bad = 0, killed = 0;
    for (int r = 0; r < rounds; r++) {
        uint8_t *w = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        uint8_t *k = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        /* between inaccessible guards, so that nothing the child maps can land in its hole */
        uint8_t *g = mmap(NULL, 3 * len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (w == MAP_FAILED || k == MAP_FAILED || g == MAP_FAILED)
            return fail("mmap");
        uint8_t *nf = mmap(g + len, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        if (nf != g + len)
            return fail("mmap fixed");
        memset(w, 'w', len / 2); /* half touched, half never touched before the fork */
        memset(k, 'k', len);
        memset(nf, 'n', len);
        if (madvise(w, len, MADV_WIPEONFORK) != 0 || madvise(k, len, MADV_WIPEONFORK) != 0 ||
            madvise(k, len, MADV_KEEPONFORK) != 0 || madvise(nf, len, MADV_DONTFORK) != 0)
            return fail("madvise");
        fflush(stdout);
        pid_t p = fork();
        if (p < 0)
            return fail("fork");
        if (p == 0) {
            int rc = 0;
            for (size_t i = 0; i < len; i += 64)
                if (w[i] != 0) {
                    printf("FAIL: child: wiped byte %zu is %#x\n", i, w[i]);
                    rc = 2;
                    break;
                }
            if (!check_fill(k, len, 'k'))
                rc = 3;
            /* the don't-fork range is not ours: not in the kernel, not in the model. The hole
             * it leaves may be taken by a new mapping of the child's (the shim's helper thread
             * stacks are 128 KiB too): mapped then, but never with the parent's bytes. */
            int inherited = 0;
            if (msync(nf, len, MS_ASYNC) == 0)
                for (size_t i = 0; i < len; i += 4096)
                    inherited |= nf[i] == 'n';
            else if (errno != ENOMEM)
                inherited = 1;
            if (inherited) {
                printf("FAIL: child: the MADV_DONTFORK range is mapped\n");
                rc = 7;
            }
            if (mount && model_maps(mount, nf, len) != 0) {
                printf("FAIL: child: the lab's map has the MADV_DONTFORK range (or is unreadable)\n");
                rc = 8;
            }
            if (mount && model_maps(mount, w, len) != 1) {
                printf("FAIL: child: the lab's map lacks the wiped range\n");
                rc = 9;
            }
            memset(w, 'c', len);
            memset(k, 'C', len);
            if (!check_fill(w, len, 'c') || !check_fill(k, len, 'C'))
                rc = 4;
            /* the child's own fork: the range is still wipe-on-fork for its children */
            fflush(stdout);
            pid_t g = fork();
            if (g == 0)
                _exit(check_fill(w, len, 0) && check_fill(k, len, 'C') ? 0 : 5);
            int st;
            if (g < 0 || waitpid(g, &st, 0) != g || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
                rc = rc ? rc : 6;
            fflush(stdout);
            _exit(rc);
        }
        bad += reap(1, &killed);
        if (!check_fill(w, len / 2, 'w') || !check_fill(w + len / 2, len / 2, 0) || !check_fill(k, len, 'k') ||
            !check_fill(nf, len, 'n')) {
            printf("FAIL: round %d: the parent's bytes changed\n", r);
            bad++;
        }
        munmap(w, len);
        munmap(k, len);
        munmap(g, 3 * len);
    }
    printf("wipeonfork children=%d killed=%d bad=%d\n", rounds, killed, bad);
    return bad != 0;
}

static int run_dontunmap(int rounds)
{
    size_t len = 8 * PG;
    int bad = 0;
    for (int r = 0; r < rounds && !bad; r++) {
        uint8_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            return fail("mmap");
        memset(p, 'd', len);
        uint8_t *q = mremap(p, len, len, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, NULL);
        if (q == MAP_FAILED)
            return fail("mremap DONTUNMAP");
        if (!check_fill(q, len, 'd')) {
            printf("FAIL: round %d: the moved bytes are wrong\n", r);
            bad++;
        }
        for (size_t i = 0; i < len; i += 128)
            if (p[i] != 0) {
                printf("FAIL: round %d: old byte %zu is %#x after DONTUNMAP\n", r, i, p[i]);
                bad++;
                break;
            }
        memset(p, 'o', len);
        if (!check_fill(p, len, 'o') || !check_fill(q, len, 'd')) {
            printf("FAIL: round %d: old and new ranges are not separate\n", r);
            bad++;
        }
        munmap(p, len);
        munmap(q, len);
    }
    printf("dontunmap rounds=%d bad=%d\n", rounds, bad);
    return bad != 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 4 && strcmp(argv[1], "malloc") == 0)
        return run_children("malloc", child_malloc, atoi(argv[2]), atoi(argv[3]));
    if (argc == 4 && strcmp(argv[1], "fixed") == 0)
        return run_children("fixed", child_fixed, atoi(argv[2]), atoi(argv[3]));
    if (argc == 4 && strcmp(argv[1], "pwrite") == 0)
        return run_pwrite(argv[2], atoi(argv[3]));
    if (argc == 3 && strcmp(argv[1], "mremap") == 0)
        return run_mremap(atoi(argv[2]));
    if ((argc == 3 || argc == 4) && strcmp(argv[1], "wipeonfork") == 0)
        return run_wipeonfork(atoi(argv[2]), argc == 4 ? argv[3] : NULL);
    if (argc == 3 && strcmp(argv[1], "dontunmap") == 0)
        return run_dontunmap(atoi(argv[2]));
    fprintf(stderr, "usage: forkcheck malloc N ROUNDS | fixed N ROUNDS | pwrite FILE ROUNDS | mremap ROUNDS | wipeonfork ROUNDS [MOUNT] | dontunmap ROUNDS\n");
    return 2;
}
