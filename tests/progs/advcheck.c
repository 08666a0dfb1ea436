/*
 * advcheck: madvise, MAP_POPULATE, MAP_LOCKED and mlockall on lab memory, one step per word.
 * Prints one line per step; every line is the same natively and under the lab.
 *
 *   advcheck FILE PAGES STEP...
 *     warm | normal | random | sequential | willneed: map the first PAGES pages of FILE private,
 *         give the advice (warm: none), read one word of every page in order, unmap (warm: keep
 *         it mapped to the end); print the sum.
 *     dontneed: map FILE private and PAGES anonymous pages; write every page of both; drop the
 *         second half of each with MADV_DONTNEED; print whether the anonymous half reads zero and
 *         the file half reads the file again, and the sum of the kept halves.
 *     free: as dontneed for the anonymous pages, with MADV_FREE: each dropped page reads zero or
 *         what was written (Linux allows either); print the sum of the kept half.
 *     populate | locked: map PAGES anonymous pages with MAP_POPULATE | MAP_LOCKED, then write
 *         and read every page; print the sum. "locked" then says whether all of them are still
 *         resident a second later, munlocks them and reads them again (under the lab's resident
 *         limit they are paged out and back in meanwhile).
 *     future: mlockall(MCL_CURRENT|MCL_FUTURE), map PAGES anonymous pages, write and read
 *         them, munlockall; print the sum.
 *     onfault: mlock2(MLOCK_ONFAULT) PAGES fresh anonymous pages, then write every other one.
 *     hold: sleep 1 s (lets a pageout under a resident limit run). nop: nothing (a baseline run).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PG 4096

static int fd = -1;
static size_t pages;

static void die(const char *what)
{
    fprintf(stderr, "advcheck: %s: %s\n", what, strerror(errno));
    exit(2);
}

static char *map_file(void)
{
    char *p = mmap(NULL, pages * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED)
        die("mmap file");
    return p;
}

static char *map_anon(int extra)
{
    char *p = mmap(NULL, pages * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | extra, -1, 0);
    if (p == MAP_FAILED)
        die("mmap anonymous");
    return p;
}

static uint64_t word(size_t i) { return i * 0x9E3779B97F4A7C15ULL ^ 0xA5; }

static uint64_t scan(const char *p, size_t from, size_t to)
{
    uint64_t sum = 0;
    for (size_t i = from; i < to; i++)
        sum += *(const volatile uint64_t *)(p + i * PG);
    return sum;
}

static void fill(char *p)
{
    for (size_t i = 0; i < pages; i++)
        *(uint64_t *)(p + i * PG) = word(i);
}

static int zero(const char *p, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++)
        for (size_t j = 0; j < PG; j++)
            if (p[i * PG + j])
                return 0;
    return 1;
}

/* Pages of [p, p + pages) resident in the process (mincore). */
static size_t resident(char *p)
{
    static unsigned char vec[1 << 16];
    size_t n = 0;
    if (pages > sizeof vec || mincore(p, pages * PG, vec) != 0)
        die("mincore");
    for (size_t i = 0; i < pages; i++)
        n += vec[i] & 1;
    return n;
}

static void advised_scan(const char *step, int advice)
{
    char *p = map_file();
    if (advice >= 0 && madvise(p, pages * PG, advice) != 0)
        die("madvise");
    printf("%s sum %llx\n", step, (unsigned long long)scan(p, 0, pages));
    /* The warm mapping stays: its reference keeps the file's VM object, so its pages stay
     * resident for the scans after it whatever the daemon does with unreferenced objects. */
    if (advice >= 0)
        munmap(p, pages * PG);
}

static void dontneed(void)
{
    size_t h = pages / 2;
    char *f = map_file(), *a = map_anon(0), *orig = malloc(pages * PG);
    if (!orig || pread(fd, orig, pages * PG, 0) != (ssize_t)(pages * PG))
        die("pread");
    memset(f, 0x5c, pages * PG);
    memset(a, 0x5c, pages * PG);
    if (madvise(f + h * PG, (pages - h) * PG, MADV_DONTNEED) != 0 || madvise(a + h * PG, (pages - h) * PG, MADV_DONTNEED) != 0)
        die("madvise(MADV_DONTNEED)");
    int filematch = memcmp(f + h * PG, orig + h * PG, (pages - h) * PG) == 0;
    int kept = 1;
    for (size_t j = 0; j < h * PG; j++)
        kept &= f[j] == 0x5c && a[j] == 0x5c;
    printf("dontneed anon-zero %d file-again %d kept %d\n", zero(a, h, pages), filematch, kept);
    free(orig);
    munmap(f, pages * PG);
    munmap(a, pages * PG);
}

static void madv_free(void)
{
    size_t h = pages / 2;
    char *a = map_anon(0);
    fill(a);
    if (madvise(a + h * PG, (pages - h) * PG, MADV_FREE) != 0)
        die("madvise(MADV_FREE)");
    int either = 1;
    for (size_t i = h; i < pages; i++) {
        uint64_t v = *(volatile uint64_t *)(a + i * PG);
        either &= v == 0 || v == word(i);
    }
    char *file = mmap(NULL, PG, PROT_READ, MAP_PRIVATE, fd, 0);
    int refused = file != MAP_FAILED && madvise(file, PG, MADV_FREE) != 0 && errno == EINVAL;
    printf("free kept %llx dropped-zero-or-same %d file-refused %d\n", (unsigned long long)scan(a, 0, h), either, refused);
    munmap(file, PG);
    munmap(a, pages * PG);
}

static void touch(const char *step, char *p)
{
    fill(p);
    printf("%s sum %llx\n", step, (unsigned long long)scan(p, 0, pages));
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: advcheck FILE PAGES STEP...\n");
        return 2;
    }
    fd = open(argv[1], O_RDONLY);
    if (fd < 0)
        die(argv[1]);
    pages = strtoul(argv[2], NULL, 10);
    for (int k = 3; k < argc; k++) {
        const char *s = argv[k];
        if (!strcmp(s, "warm")) advised_scan(s, -1);
        else if (!strcmp(s, "normal")) advised_scan(s, MADV_NORMAL);
        else if (!strcmp(s, "random")) advised_scan(s, MADV_RANDOM);
        else if (!strcmp(s, "sequential")) advised_scan(s, MADV_SEQUENTIAL);
        else if (!strcmp(s, "willneed")) advised_scan(s, MADV_WILLNEED);
        else if (!strcmp(s, "dontneed")) dontneed();
        else if (!strcmp(s, "free")) madv_free();
        else if (!strcmp(s, "populate")) {
            char *p = map_anon(MAP_POPULATE);
            touch(s, p);
            munmap(p, pages * PG);
        } else if (!strcmp(s, "locked")) {
            char *p = map_anon(MAP_LOCKED);
            touch(s, p);
            sleep(1);
            printf("locked all resident %d\n", resident(p) == pages);
            if (munlock(p, pages * PG) != 0)
                die("munlock");
            /* Under a resident limit (ADVCHECK_WAIT_PAGEOUT set) wait, at most 20 s, until the
             * pageout has taken some of the pages, so that the reread brings them back. */
            for (int i = 0; i < 200 && getenv("ADVCHECK_WAIT_PAGEOUT") && resident(p) == pages; i++)
                usleep(100000);
            printf("unlocked sum %llx\n", (unsigned long long)scan(p, 0, pages));
            munmap(p, pages * PG);
        } else if (!strcmp(s, "future")) {
            if (mlockall(MCL_CURRENT | MCL_FUTURE) != 0)
                die("mlockall");
            char *p = map_anon(0);
            touch(s, p);
            if (munlockall() != 0)
                die("munlockall");
            munmap(p, pages * PG);
        } else if (!strcmp(s, "onfault")) {
            char *p = map_anon(0);
            if (mlock2(p, pages * PG, MLOCK_ONFAULT) != 0)
                die("mlock2");
            for (size_t i = 0; i < pages; i += 2)
                *(uint64_t *)(p + i * PG) = word(i);
            printf("onfault sum %llx\n", (unsigned long long)scan(p, 0, pages));
            munlock(p, pages * PG);
            munmap(p, pages * PG);
        } else if (!strcmp(s, "hold")) sleep(1);
        else if (!strcmp(s, "nop")) printf("nop\n");
        else {
            fprintf(stderr, "advcheck: unknown step %s\n", s);
            return 2;
        }
        fflush(stdout);
    }
    return 0;
}
