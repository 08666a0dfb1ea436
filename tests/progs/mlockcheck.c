/*
 * mlockcheck MIB [unlock]: malloc MIB MiB (lab memory under the lab), mlock it, fill every page
 * with words derived from its index, read it all back, then print "locked N pages sum S" (S: a
 * sum of every word, the same natively and under the lab). With "unlock", munlock it and go over
 * it twice more (its pages may then be paged out and back in) and print the sum again.
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
        fprintf(stderr, "usage: mlockcheck MIB [unlock]\n");
        return 2;
    }
    size_t pages = (size_t)strtoul(argv[1], NULL, 10) * 256, per = 4096 / sizeof(uint64_t);
    uint64_t *w = malloc(pages * 4096);
    if (!w) {
        fprintf(stderr, "mlockcheck: out of memory\n");
        return 2;
    }
    if (mlock(w, pages * 4096) != 0) {
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
    if (argc > 2 && strcmp(argv[2], "unlock") == 0) {
        if (munlock(w, pages * 4096) != 0) {
            fprintf(stderr, "mlockcheck: munlock: %s\n", strerror(errno));
            return 2;
        }
        for (int pass = 0; pass < 2; pass++)
            if (check(w, pages, &sum))
                return 1;
        printf("unlocked sum %llx\n", (unsigned long long)sum);
    }
    free(w);
    return 0;
}
