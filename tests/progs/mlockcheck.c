/*
 * mlockcheck MIB [unlock] [mmap] [pretouch] [nolock]: malloc MIB MiB (lab memory under the lab),
 * mlock it, fill every page with words derived from its index, read it all back, then print
 * "locked N pages sum S" (S: a sum of every word, the same natively and under the lab). With
 * "unlock", munlock it and go over it twice more (its pages may then be paged out and back in)
 * and print the sum again. "mmap": the block is a fresh private anonymous mmap instead (one map
 * entry, page aligned: exact fault counts); "pretouch": fill it before the mlock too; "nolock":
 * no mlock (the run to compare with).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static uint64_t word(size_t page, size_t j) { return (page * 0x9E3779B97F4A7C15ULL) ^ (j * 0xD6E8FEB86659FD93ULL) ^ 0x5A; }

static int check(uint64_t *w, size_t pages, uint64_t *sum)
{
    size_t per = 4096 / sizeof *w;
    *sum = 0;
    for (size_t i = 0; i < pages; i++)
        for (size_t j = 0; j < per; j++) {
            uint64_t v = w[i * per + j];
            if (v != word(i, j)) {
                fprintf(stderr, "mlockcheck: page %zu word %zu is %#llx, not %#llx\n", i, j, (unsigned long long)v,
                        (unsigned long long)word(i, j));
                return 1;
            }
            *sum += v;
        }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: mlockcheck MIB [unlock] [mmap] [pretouch] [nolock]\n");
        return 2;
    }
    int unlock = 0, use_mmap = 0, pretouch = 0, nolock = 0;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "unlock") == 0) unlock = 1;
        else if (strcmp(argv[i], "mmap") == 0) use_mmap = 1;
        else if (strcmp(argv[i], "pretouch") == 0) pretouch = 1;
        else if (strcmp(argv[i], "nolock") == 0) nolock = 1;
        else {
            fprintf(stderr, "mlockcheck: unknown word %s\n", argv[i]);
            return 2;
        }
    }
    size_t pages = (size_t)strtoul(argv[1], NULL, 10) * 256, per = 4096 / sizeof(uint64_t);
    uint64_t *w;
    if (use_mmap) {
        w = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (w == MAP_FAILED)
            w = NULL;
    } else
        w = malloc(pages * 4096);
    if (!w) {
        fprintf(stderr, "mlockcheck: out of memory\n");
        return 2;
    }
    if (pretouch)
        for (size_t i = 0; i < pages; i++)
            for (size_t j = 0; j < per; j++)
                w[i * per + j] = word(i, j);
    if (!nolock && mlock(w, pages * 4096) != 0) {
        fprintf(stderr, "mlockcheck: mlock: %s\n", strerror(errno));
        return 2;
    }
    for (size_t i = 0; i < pages; i++)
        for (size_t j = 0; j < per; j++)
            w[i * per + j] = word(i, j);
    uint64_t sum;
    if (check(w, pages, &sum))
        return 1;
    printf("locked %zu pages sum %llx\n", pages, (unsigned long long)sum);
    if (unlock) {
        if (!nolock && munlock(w, pages * 4096) != 0) {
            fprintf(stderr, "mlockcheck: munlock: %s\n", strerror(errno));
            return 2;
        }
        for (int pass = 0; pass < 2; pass++)
            if (check(w, pages, &sum))
                return 1;
        printf("unlocked sum %llx\n", (unsigned long long)sum);
    }
    if (use_mmap)
        munmap(w, pages * 4096);
    else
        free(w);
    return 0;
}
