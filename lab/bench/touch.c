/* touch: map a file and read one byte from every page in order; the timed loop is
 * all faults, so us_per_page is the cost of one fault (and its read-ahead share).
 *
 *   touch FILE [--shared]      MAP_PRIVATE by default, MAP_SHARED (O_RDWR) with --shared
 *   prints: pages=<n> us_per_page=<x.xxx> sum=<sum of the bytes read>
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

int main(int argc, char **argv)
{
    int shared = argc == 3 && strcmp(argv[2], "--shared") == 0;
    if (argc < 2 || (argc == 3 && !shared) || argc > 3) {
        fprintf(stderr, "usage: touch FILE [--shared]\n");
        return 2;
    }
    int fd = open(argv[1], shared ? O_RDWR : O_RDONLY);
    if (fd < 0) {
        fprintf(stderr, "touch: open %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        fprintf(stderr, "touch: fstat: %s\n", strerror(errno));
        return 1;
    }
    long pg = sysconf(_SC_PAGESIZE);
    size_t size = (size_t)st.st_size;
    size_t pages = (size + (size_t)pg - 1) / (size_t)pg;
    uint64_t sum = 0;
    double us = 0;
    if (pages > 0) {
        volatile uint8_t *p = mmap(NULL, size, PROT_READ, shared ? MAP_SHARED : MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            fprintf(stderr, "touch: mmap: %s\n", strerror(errno));
            return 1;
        }
        double t0 = now_us();
        for (size_t i = 0; i < pages; i++)
            sum += p[i * (size_t)pg];
        us = now_us() - t0;
        munmap((void *)p, size);
    }
    close(fd);
    printf("pages=%zu us_per_page=%.3f sum=%llu\n", pages, pages ? us / (double)pages : 0.0,
           (unsigned long long)sum);
    return 0;
}
