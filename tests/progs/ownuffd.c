/* ownuffd: an ordinary program that serves page faults of its own memory with its own
 * userfaultfd (as stress-ng --userfaultfd, the kernel's uffd tests, live migration and GC
 * runtimes do). It knows nothing of the lab.
 *
 *   ownuffd [FILE]
 *
 * Two ranges: 16 pages of anonymous mmap, and the whole pages of a malloc(2 MiB) block.
 * The first page of each is written ('A', 'B') before registering: a page already present
 * stays, and the program's uffd never hears of it. Then both are registered (MISSING) with
 * a uffd of its own; a handler thread fills page i of a range with the byte 'a' + i % 26
 * (UFFDIO_COPY). The main thread reads every byte of every page and checks it.
 * With FILE (a file of at least 2 pages), a MAP_PRIVATE mapping of it is registered too:
 * the kernel refuses file mappings that are neither shmem nor hugetlb with EINVAL.
 *
 * Prints one line per range: "anon: pages 16 faults 15 ok", "heap: faults N ok" (N = the
 * block's whole pages - 1), "file: EINVAL"; on stderr "registered P" (pages registered).
 * Exit 0 when all is as expected, 1 otherwise.
 *
 *   ownuffd --paged N   (see paged(): pages the lab paged out come back before they leave it)
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static long g_pg;
static int g_uffd;
static uintptr_t g_base[2], g_len[2];
static long g_faults[2];
static volatile int g_stop;

static void *handler(void *arg)
{
    (void)arg;
    char *page = aligned_alloc((size_t)g_pg, (size_t)g_pg);
    while (!g_stop) {
        struct pollfd p = {g_uffd, POLLIN, 0};
        if (poll(&p, 1, 100) <= 0)
            continue;
        struct uffd_msg m;
        if (read(g_uffd, &m, sizeof m) != sizeof m)
            continue;
        if (m.event != UFFD_EVENT_PAGEFAULT) {
            fprintf(stderr, "unexpected event %u\n", m.event);
            continue;
        }
        uintptr_t a = (uintptr_t)m.arg.pagefault.address & ~(uintptr_t)(g_pg - 1);
        int r = -1;
        for (int k = 0; k < 2; k++)
            if (a >= g_base[k] && a < g_base[k] + g_len[k])
                r = k;
        if (r < 0) {
            fprintf(stderr, "fault outside the ranges at %#lx\n", (unsigned long)a);
            exit(1);
        }
        memset(page, 'a' + (int)(((a - g_base[r]) / (uintptr_t)g_pg) % 26), (size_t)g_pg);
        struct uffdio_copy c = {.dst = a, .src = (uintptr_t)page, .len = (uint64_t)g_pg, .mode = 0};
        if (ioctl(g_uffd, UFFDIO_COPY, &c) != 0 && errno != EEXIST) {
            perror("UFFDIO_COPY");
            exit(1);
        }
        __atomic_add_fetch(&g_faults[r], 1, __ATOMIC_RELAXED);
    }
    free(page);
    return NULL;
}

static int reg(uintptr_t a, uintptr_t len)
{
    struct uffdio_register r = {.range = {.start = a, .len = len}, .mode = UFFDIO_REGISTER_MODE_MISSING};
    return ioctl(g_uffd, UFFDIO_REGISTER, &r);
}

static int check(int k, char first)
{
    const char *p = (const char *)g_base[k];
    long pages = (long)(g_len[k] / (uintptr_t)g_pg);
    for (long i = 0; i < pages; i++) {
        char want = i == 0 ? first : (char)('a' + i % 26);
        for (long j = 0; j < g_pg; j++)
            if (p[i * g_pg + j] != want) {
                printf("range %d page %ld byte %ld: %#x, want %#x\n", k, i, j, p[i * g_pg + j] & 0xff, want);
                return 0;
            }
    }
    return 1;
}

/* --paged N: fill N anonymous pages (page i all bytes 1 + i % 251), wait (at most 60 s)
 * until mincore shows at least a quarter of them gone from memory (paged out by a
 * resident limit), then register them with our uffd: every page must still read its
 * bytes, none reaching our handler. "paged: out yes|no faults F ok|BAD". */
static int paged(long n)
{
    size_t len = (size_t)n * (size_t)g_pg;
    unsigned char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned char *vec = malloc((size_t)n);
    if (m == MAP_FAILED || !vec)
        return 1;
    for (long i = 0; i < n; i++)
        memset(m + i * g_pg, 1 + (int)(i % 251), (size_t)g_pg);
    long out = 0;
    for (int t = 0; t < 600 && out < n / 4; t++) {
        usleep(100 * 1000);
        if (mincore(m, len, vec) != 0)
            return 1;
        out = 0;
        for (long i = 0; i < n; i++)
            out += !(vec[i] & 1);
    }
    g_base[0] = (uintptr_t)m;
    g_len[0] = len;
    g_uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    struct uffdio_api api = {.api = UFFD_API, .features = 0};
    if (g_uffd < 0 || ioctl(g_uffd, UFFDIO_API, &api) != 0 || reg(g_base[0], g_len[0]) != 0) {
        printf("paged: %s\n", strerror(errno));
        return 1;
    }
    pthread_t t;
    pthread_create(&t, NULL, handler, NULL);
    long bad = 0;
    for (long i = 0; i < n; i++)
        for (long j = 0; j < g_pg; j++)
            bad += m[i * g_pg + j] != 1 + i % 251;
    g_stop = 1;
    pthread_join(t, NULL);
    int ok = bad == 0 && g_faults[0] == 0;
    printf("paged: out %s faults %ld %s\n", out >= n / 4 ? "yes" : "no", g_faults[0], ok ? "ok" : "BAD");
    fprintf(stderr, "not resident before registering: %ld of %ld; wrong bytes %ld\n", out, n, bad);
    return !ok;
}

int main(int argc, char **argv)
{
    g_pg = sysconf(_SC_PAGESIZE);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 2 && strcmp(argv[1], "--paged") == 0)
        return paged(atol(argv[2]));
    char *anon = mmap(NULL, 16 * (size_t)g_pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *blk = malloc(2 << 20);
    if (anon == MAP_FAILED || !blk) {
        perror("mmap/malloc");
        return 1;
    }
    uintptr_t hs = ((uintptr_t)blk + (uintptr_t)g_pg - 1) & ~(uintptr_t)(g_pg - 1);
    uintptr_t he = ((uintptr_t)blk + (2 << 20)) & ~(uintptr_t)(g_pg - 1);
    g_base[0] = (uintptr_t)anon;
    g_len[0] = 16 * (uintptr_t)g_pg;
    g_base[1] = hs;
    g_len[1] = he - hs;
    memset(anon, 'A', (size_t)g_pg);
    memset((void *)hs, 'B', (size_t)g_pg);

    g_uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (g_uffd < 0) {
        perror("userfaultfd");
        return 1;
    }
    struct uffdio_api api = {.api = UFFD_API, .features = 0};
    if (ioctl(g_uffd, UFFDIO_API, &api) != 0) {
        perror("UFFDIO_API");
        return 1;
    }
    int bad = 0;
    for (int k = 0; k < 2; k++)
        if (reg(g_base[k], g_len[k]) != 0) {
            printf("%s: UFFDIO_REGISTER: %s\n", k ? "heap" : "anon", strerror(errno));
            return 1;
        }
    fprintf(stderr, "registered %lu\n", (unsigned long)((g_len[0] + g_len[1]) / (uintptr_t)g_pg));
    pthread_t t;
    pthread_create(&t, NULL, handler, NULL);
    int ok0 = check(0, 'A'), ok1 = check(1, 'B');
    g_stop = 1;
    pthread_join(t, NULL);
    printf("anon: pages 16 faults %ld %s\n", g_faults[0], ok0 && g_faults[0] == 15 ? "ok" : "BAD");
    long want1 = (long)(g_len[1] / (uintptr_t)g_pg) - 1;
    printf("heap: faults %s %s\n", g_faults[1] == want1 ? "N" : "?", ok1 && g_faults[1] == want1 ? "ok" : "BAD");
    bad |= !(ok0 && g_faults[0] == 15 && ok1 && g_faults[1] == want1);

    if (argc > 1) {
        int fd = open(argv[1], O_RDONLY);
        char *f = fd < 0 ? MAP_FAILED : mmap(NULL, 2 * (size_t)g_pg, PROT_READ, MAP_PRIVATE, fd, 0);
        if (f == MAP_FAILED) {
            perror(argv[1]);
            return 1;
        }
        int r = reg((uintptr_t)f, 2 * (uintptr_t)g_pg);
        printf("file: %s\n", r == 0 ? "registered" : strerror(errno));
        bad |= !(r != 0 && errno == EINVAL);
        /* the mapping still reads the file */
        char c;
        if (pread(fd, &c, 1, g_pg + 5) != 1 || c != f[g_pg + 5]) {
            printf("file: mapping does not read the file\n");
            bad = 1;
        }
    }
    munmap(anon, 16 * (size_t)g_pg);
    free(blk);
    return bad;
}
