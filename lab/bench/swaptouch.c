/* swaptouch: the end-to-end paging benchmark's program. Maps MIB MiB of anonymous memory
 * (lab memory under `lab run`), then times three passes, one access per page:
 *
 *   fill  write every page in order (zero-fill faults; under a resident limit also page-outs)
 *   seq   read every page in order, checking its first word (swap-ins under a limit)
 *   rand  read every page in a random order (a fixed permutation), checking it
 *
 *   swaptouch MIB        prints: pages=<n> fill_us=<x> seq_us=<x> rand_us=<x> (microseconds per page)
 * Exit 1 if a page holds the wrong bytes.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

int main(int argc, char **argv)
{
    if (argc != 2 || atol(argv[1]) <= 0) {
        fprintf(stderr, "usage: swaptouch MIB\n");
        return 2;
    }
    size_t pages = (size_t)atol(argv[1]) * 256, page = 4096;
    char *m = mmap(NULL, pages * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        perror("swaptouch: mmap");
        return 1;
    }
    /* The permutation lives outside the timed memory's budget only if it is small: 4 bytes a page. */
    uint32_t *order = malloc(pages * sizeof *order);
    if (!order) {
        perror("swaptouch: malloc");
        return 1;
    }
    for (size_t i = 0; i < pages; i++)
        order[i] = (uint32_t)i;
    uint64_t x = 88172645463325252ull;
    for (size_t i = pages - 1; i > 0; i--) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        size_t j = x % (i + 1);
        uint32_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }

    double t0 = now_us();
    for (size_t i = 0; i < pages; i++)
        *(volatile uint64_t *)(m + i * page) = i * 2654435761u + 1;
    double t1 = now_us();
    int bad = 0;
    for (size_t i = 0; i < pages; i++)
        if (*(volatile uint64_t *)(m + i * page) != i * 2654435761u + 1)
            bad++;
    double t2 = now_us();
    for (size_t k = 0; k < pages; k++) {
        size_t i = order[k];
        if (*(volatile uint64_t *)(m + i * page) != i * 2654435761u + 1)
            bad++;
    }
    double t3 = now_us();
    printf("pages=%zu fill_us=%.3f seq_us=%.3f rand_us=%.3f bad=%d\n", pages, (t1 - t0) / pages, (t2 - t1) / pages,
           (t3 - t2) / pages, bad);
    return bad ? 1 : 0;
}
