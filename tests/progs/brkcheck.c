/* brkcheck PAGES: grow the data segment with sbrk by PAGES pages (64 KiB at a time), write a
 * pattern into every page, check it; lower the break by half with brk, raise it again and check
 * the re-grown pages read zero (Linux gives fresh zero pages above a lowered break) while the
 * kept half still holds its pattern. Prints "ok PAGES", or "bad ..." and exits 1. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long pages = argc > 1 ? atol(argv[1]) : 1024, step = 16;
    char *start = sbrk(0);
    for (long i = 0; i < pages; i += step)
        if (sbrk(step * 4096) == (void *)-1) { perror("sbrk"); return 1; }
    if ((char *)sbrk(0) != start + pages * 4096) { printf("bad break after growth\n"); return 1; }
    for (long i = 0; i < pages; i++) *(uint64_t *)(start + i * 4096) = (uint64_t)i * 2654435761u + 1;
    for (long i = 0; i < pages; i++)
        if (*(uint64_t *)(start + i * 4096) != (uint64_t)i * 2654435761u + 1) { printf("bad page %ld\n", i); return 1; }
    long half = pages / 2;
    if (brk(start + half * 4096) != 0) { perror("brk"); return 1; }
    if (sbrk((pages - half) * 4096) == (void *)-1) { perror("sbrk again"); return 1; }
    for (long i = 0; i < pages; i++) {
        uint64_t want = i < half ? (uint64_t)i * 2654435761u + 1 : 0, got = *(uint64_t *)(start + i * 4096);
        if (got != want) { printf("bad page %ld after brk: %llu\n", i, (unsigned long long)got); return 1; }
    }
    printf("ok %ld\n", pages);
    return 0;
}
